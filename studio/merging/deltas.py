"""The parents' weight changes ΔW, module by module, as PEFT itself would merge them into the base.

All parents are loaded as named adapters onto ONE copy of the base model, and ΔW is read
one module at a time, so a merge holds a single base model plus one module's changes per
parent, whatever the model size (a dense ΔW of every module of every parent would cost a
model's worth of memory per parent).

ΔW comes from :func:`studio.variants.peft_common.layer_delta`: the LoRA product where
the layer is a plain LoRA, else (merged weight − original weight) by the layer's own merge
code, which covers every LoRA format PEFT can load (DoRA, whose change is not low-rank,
rsLoRA, per-module ranks and scales). That subtraction would lose most of a small change
to rounding in fp32 (a weight of 0.05 changed by 1e-4 keeps about 3 significant digits),
so each layer is cast to float64 while its ΔW is read, and back (exactly) afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from studio.errors import StudioError


class ParentChanges:
    """Parent adapters loaded on one base; :meth:`modules` yields every adapted module's ΔWs."""

    def __init__(self, parents: list[tuple[Path, str]], base_path: Path, on_load: Callable[[int], None] | None = None):
        """Load ``parents`` ((adapter dir, label) pairs) onto the causal-LM base at ``base_path``.

        ``on_load(i)`` is called before the i-th parent is read (progress and cancellation).
        """
        from peft import PeftModel

        from studio.training.models import load_base_model

        self.names = [f"parent_{i}" for i in range(len(parents))]
        self.labels = [label for _, label in parents]
        base = load_base_model(Path(base_path), "causal-lm")
        model = None
        for i, (folder, label) in enumerate(parents):
            if on_load is not None:
                on_load(i)
            try:
                if model is None:
                    model = PeftModel.from_pretrained(base, str(folder), adapter_name=self.names[i])
                else:
                    model.load_adapter(str(folder), adapter_name=self.names[i])
            except (RuntimeError, ValueError, KeyError, TypeError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise StudioError(f"{label} does not fit its base model: {first}") from None
        self.model = model.eval()
        self._layers = self._check_layers()

    def _check_layers(self) -> dict[str, Any]:
        import torch

        from studio.variants.peft_common import tuner_layers

        layers = tuner_layers(self.model)
        for name, layer in layers.items():
            if type(layer.get_base_layer()) is not torch.nn.Linear:
                kind = type(layer.get_base_layer()).__name__
                raise StudioError(f"the adapters change {name}, a {kind} layer; only linear layers can be merged")
        for name, label in zip(self.names, self.labels, strict=True):
            if not any(name in _ranks(layer) for layer in layers.values()):
                raise StudioError(f"{label} adapts no layer of its base model")
        return layers

    @property
    def module_names(self) -> list[str]:
        return sorted(self._layers)

    def module(self, name: str) -> tuple[list[Any], list[int]]:
        """(ΔW of each parent, fp32 on the CPU, zeros where it does not adapt ``name``; each parent's rank there)."""
        import torch

        from studio.variants.peft_common import layer_delta

        layer = self._layers[name]
        weight = layer.get_base_layer().weight
        dtype, ranks = weight.dtype, _ranks(layer)
        layer.to(torch.float64)
        try:
            deltas = [
                layer_delta(layer, adapter) if adapter in ranks else torch.zeros(weight.shape) for adapter in self.names
            ]
        finally:
            layer.to(dtype)  # fp32 -> float64 -> fp32 is exact: the base and the adapters are unchanged
        return deltas, [int(ranks.get(adapter, 0)) for adapter in self.names]

    def factors(self, name: str) -> list[tuple[Any, Any, float] | None]:
        """Each parent's LoRA factors of ``name`` as (A (r × d_in), B (d_out × r), scale), fp32 on the CPU.

        None for a parent that does not adapt ``name``. The scale is PEFT's own (alpha/r, or
        alpha/√r with rsLoRA, per-module patterns applied), so ΔW = scale · B A. Only plain
        LoRA layers have rank units: a DoRA layer (or a bias-carrying LoRA) is refused.
        """
        from peft.tuners.lora import LoraLayer

        layer = self._layers[name]
        ranks = _ranks(layer)
        out: list[tuple[Any, Any, float] | None] = []
        for adapter, label in zip(self.names, self.labels, strict=True):
            if adapter not in ranks:
                out.append(None)
                continue
            plain = isinstance(layer, LoraLayer) and adapter not in getattr(layer, "lora_variant", {})
            if not plain or getattr(layer, "lora_bias", {}).get(adapter):
                raise StudioError(f"{label} is not a plain LoRA in {name} (DoRA or a LoRA bias): it has no rank units")
            a = layer.lora_A[adapter].weight.detach().float().cpu()
            b = layer.lora_B[adapter].weight.detach().float().cpu()
            out.append((a, b, float(layer.scaling[adapter])))
        return out

    def modules(self) -> Iterator[tuple[str, list[Any], list[int]]]:
        for name in self.module_names:
            yield (name, *self.module(name))


def _ranks(layer: Any) -> dict[str, int]:
    ranks = getattr(layer, "r", {})
    return ranks if isinstance(ranks, dict) else {}
