"""Hand-written adapter layers for variants PEFT cannot express (DyLoRA, SoRA).

A target ``nn.Linear`` is replaced in place by an :class:`AdapterLinear` that keeps the
original layer as ``base_layer`` (frozen) and adds the variant's own tensors. Module
names therefore stay those of the transformers model (``model.layers.0.self_attn.q_proj``),
which is what ``delta_weights`` and the plain-LoRA export key on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from studio.variants.targets import HEAD_NAMES, find_target_linears


class AdapterLinear(nn.Module):
    """A frozen linear layer plus an additive adapter branch.

    Subclasses create their tensors in ``__init__`` and implement :meth:`adapter_forward`
    (what is added to the base output, given the dropped-out input) and :meth:`delta_weight`.
    """

    def __init__(self, base_layer: nn.Linear, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        return out + self.adapter_forward(self.dropout(x)).to(out.dtype)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """ΔW (out × in, fp32, CPU) this layer adds to the base weight at inference."""
        raise NotImplementedError

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The adapter's own tensors (everything except the frozen base layer)."""
        return [p for n, p in self.named_parameters() if not n.startswith("base_layer.")]


def wrap_linears(
    model: nn.Module, targets: list[str], make: Callable[[str, nn.Linear], AdapterLinear]
) -> dict[str, AdapterLinear]:
    """Replace every target linear by ``make(name, linear)``; returns {name: adapter layer}.

    Layers are wrapped in ``named_modules`` order, so random inits are reproducible under a seed.
    """
    found = find_target_linears(model, targets)
    if not found:
        raise ValueError(f"no linear layer matches the target modules {targets}")
    for name, linear in found.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(name, linear))
    return adapter_layers(model)


def adapter_layers(model: nn.Module, cls: type[AdapterLinear] = AdapterLinear) -> dict[str, Any]:
    """{module name: layer} of every adapter layer of type ``cls`` in ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, cls)}


def norm_module_names(model: nn.Module) -> list[str]:
    """Names of the normalisation layers (LayerNorm, RMSNorm, ...) outside the task heads."""
    names = []
    for name, module in model.named_modules():
        if not name or name.split(".")[0] in HEAD_NAMES:
            continue
        is_norm = isinstance(module, nn.LayerNorm) or type(module).__name__.lower().endswith("norm")
        if is_norm and any(True for _ in module.parameters(recurse=False)):
            names.append(name)
    return names


def set_trainable(model: nn.Module, modules_to_save: list[str], extra_modules: list[str] = ()) -> None:
    """Freeze everything, then unfreeze the adapter tensors, the task heads and ``extra_modules``."""
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in adapter_layers(model).values():
        for p in layer.adapter_parameters():
            p.requires_grad_(True)
    for name in [*modules_to_save, *extra_modules]:
        model.get_submodule(name).requires_grad_(True)
