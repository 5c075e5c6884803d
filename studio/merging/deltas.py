"""Each adapter's weight change ΔW per module, as PEFT itself would merge it into the base.

ΔW comes from :func:`studio.variants.peft_common.layer_delta`: the LoRA product where
the layer is a plain LoRA, else (merged weight − original weight) by the layer's own merge
code, which covers every format PEFT can load (DoRA, whose change is not low-rank,
AdaLoRA, ...). That subtraction would lose most of a small change to rounding in fp32 (a
weight of 0.05 changed by 1e-4 keeps about 3 significant digits), so base and adapter are
loaded in float64 here; ΔW is then kept in fp32.
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

    from studio.training.models import load_base_model
    from studio.variants.peft_common import layer_delta, tuner_layers

    base = load_base_model(Path(base_path), "causal-lm").double()
    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir)).double().eval()
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudioError(f"{label} does not fit its base model: {first}") from None
    deltas, ranks = {}, {}
    for name, layer in tuner_layers(model).items():
        if type(layer.get_base_layer()) is not torch.nn.Linear:
            kind = type(layer.get_base_layer()).__name__
            raise StudioError(f"{label} adapts {name}, a {kind} layer; only linear layers can be merged")
        deltas[name] = sum(layer_delta(layer, adapter) for adapter in layer.active_adapters)
        ranks[name] = sum(_rank_of(layer, adapter) for adapter in layer.active_adapters)
    if not deltas:
        raise StudioError(f"{label} adapts no layer of its base model")
    return AdapterDeltas(deltas, ranks)


def _rank_of(layer: Any, adapter: str) -> int:
    ranks = getattr(layer, "r", {})
    return int(ranks.get(adapter, 0)) if isinstance(ranks, dict) else int(ranks)
