"""Which adapters can be the experts of a mixture: refused at submission, with what to do, not on a worker later."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from studio.errors import ValidationFailed

MIXTURE_VARIANT = "mixture"


def check_mixable(adapters: list[Any]) -> None:
    """Raise ValidationFailed unless ``adapters`` (registry rows) can be the experts of one MeteoRA mixture.

    The merge checks (:func:`studio.merging.checks.check_mergeable`: readable PEFT
    safetensors, causal LM, no ``modules_to_save``, no pruning masks) plus what a gated
    layer holds: plain linear LoRA (the serving bank's rule) adapting the same modules
    (:func:`studio.merging.checks.check_rank_units`). A mixture is no expert itself.
    """
    from studio.evaluation.loading import ADAPTER_CONFIG
    from studio.merging.checks import check_mergeable, check_rank_units
    from studio.serving.bank import _refusal

    if len(adapters) < 2:
        raise ValidationFailed(f"a mixture needs at least 2 expert adapters ({len(adapters)} given)")
    nested = [f"#{row.id}" for row in adapters if row.variant == MIXTURE_VARIANT]
    if nested:
        raise ValidationFailed(
            f"{', '.join(nested)} {'is a mixture' if len(nested) == 1 else 'are mixtures'}; the experts of a "
            "mixture must be plain LoRA adapters (pick the mixture's own experts instead)"
        )
    bases = {row.base_model for row in adapters}
    if len(bases) > 1:
        listed = "; ".join(f"#{row.id} is for {row.base_model}" for row in adapters)
        raise ValidationFailed(
            f"the experts of a mixture must share one base model ({listed}); pick adapters of one base model"
        )
    check_mergeable(adapters, "linear")
    for row in adapters:
        reason = _refusal(json.loads((Path(row.path) / ADAPTER_CONFIG).read_text(encoding="utf-8")))
        if reason:
            raise ValidationFailed(
                f"adapter #{row.id} cannot be an expert of a mixture because {reason}; merge it alone with linear "
                "first (that writes it as a plain LoRA) and use the result"
            )
    check_rank_units(adapters, "a mixture")


def is_mixture(row: Any) -> bool:
    """True for a registry adapter row that is a MeteoRA mixture bundle (not a PEFT directory)."""
    return getattr(row, "variant", None) == MIXTURE_VARIANT
