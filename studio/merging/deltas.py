"""Each adapter's weight change ΔW per module, as PEFT itself would merge it into the base.

ΔW is taken as (merged weight − original weight) of every adapted layer, which covers
every format PEFT can load: LoRA at per-module ranks and scales, rsLoRA, DoRA (whose
change is not low-rank), AdaLoRA. The subtraction would lose most of a small change to
rounding in fp32 (a weight of 0.05 changed by 1e-4 keeps about 3 significant digits), so
the base and adapter are loaded in float64 for it; ΔW is then kept in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import StudioError


@dataclass
class AdapterDeltas:
    """One adapter's ΔW per module (fp32, CPU) and its rank there."""

    deltas: dict[str, Any]
    ranks: dict[str, int]


def adapter_deltas(adapter_dir: Path, base_path: Path, label: str) -> AdapterDeltas:
    """Load ``adapter_dir`` onto the causal-LM base at ``base_path`` and read every module's ΔW."""
    import torch
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    from studio.training.models import load_base_model

    base = load_base_model(Path(base_path), "causal-lm").double()
    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir)).double().eval()
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudioError(f"{label} does not fit its base model: {first}") from None
    root = model.base_model.model
    deltas, ranks = {}, {}
    with torch.no_grad():
        for name, module in root.named_modules():
            if not isinstance(module, BaseTunerLayer) or not module.active_adapters:
                continue
            layer = module.get_base_layer()
            if type(layer) is not torch.nn.Linear:
                raise StudioError(
                    f"{label} adapts {name}, a {type(layer).__name__} layer; only linear layers can be merged"
                )
            before = layer.weight.detach().clone()
            module.merge()
            deltas[name] = (layer.weight.detach() - before).float()
            ranks[name] = int(sum(_rank_of(module, adapter) for adapter in module.active_adapters))
    if not deltas:
        raise StudioError(f"{label} adapts no layer of its base model")
    del model, base
    return AdapterDeltas(deltas, ranks)


def _rank_of(module: Any, adapter: str) -> int:
    ranks = getattr(module, "r", {})
    return int(ranks.get(adapter, 0)) if isinstance(ranks, dict) else int(ranks)
