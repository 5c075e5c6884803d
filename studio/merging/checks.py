"""Which adapters can be merged: refused at submission, with what to do instead, not on a worker later."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from studio.errors import ValidationFailed


def check_mergeable(adapters: list[Any]) -> None:
    """Raise ValidationFailed unless ``adapters`` (registry rows) can be merged into one plain LoRA.

    All must be causal-LM adapters of one base model, stored as PEFT safetensors, without
    fully trained modules (``modules_to_save``: a classifier's head, say) and without
    LoRAPrune's pruning masks, neither of which is a weight change a LoRA can carry.
    """
    from studio.errors import StudioError
    from studio.evaluation.loading import ADAPTER_CONFIG, check_adapter_dir
    from studio.variants._loraprune_masks import MASKS_FILE

    bases = {row.base_model for row in adapters}
    if len(bases) > 1:
        listed = "; ".join(f"#{row.id} is for {row.base_model}" for row in adapters)
        raise ValidationFailed(f"adapters of different base models cannot be merged ({listed}); pick one base model")
    kinds: dict[str, list[int]] = {}
    for row in adapters:
        folder = Path(row.path)
        try:
            check_adapter_dir(folder, row.id)
        except StudioError as exc:
            raise ValidationFailed(str(exc)) from None
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        if config.get("task_type") == "SEQ_CLS":
            raise ValidationFailed(
                f"adapter #{row.id} is a classifier: its head is trained in full, not as a weight change, "
                "so classifiers cannot be merged yet"
            )
        if config.get("modules_to_save"):
            raise ValidationFailed(
                f"adapter #{row.id} trains {', '.join(config['modules_to_save'])} in full (modules_to_save); "
                "only low-rank weight changes can be merged"
            )
        if (folder / MASKS_FILE).is_file() or (folder / "native" / MASKS_FILE).is_file():
            raise ValidationFailed(
                f"adapter #{row.id} is a LoRAPrune adapter: its pruning masks would be lost in a merge"
            )
        kinds.setdefault(str(config.get("peft_type", "LORA")), []).append(row.id)
    if len(kinds) > 1:
        # PEFT loads adapters of one type onto one model; a merge of one adapter writes it as a plain LoRA.
        listed = "; ".join(f"{kind}: {', '.join(f'#{i}' for i in ids)}" for kind, ids in sorted(kinds.items()))
        others = [f"#{i}" for kind, ids in sorted(kinds.items()) if kind != "LORA" for i in ids]
        raise ValidationFailed(
            f"the adapters are of different PEFT types ({listed}); merge {', '.join(others)} alone first "
            "(a merge of one adapter writes it as a plain LoRA) and merge the result"
        )
