"""SLoRA (Guo et al., 2025): structured LoRA with a trained r × r middle matrix, random init (spec §7)."""

from __future__ import annotations

from typing import Any

import torch

from studio.variants._core_matrix import CoreMatrixVariant, LayerInit, kaiming_uniform
from studio.variants.base import BuildContext
from studio.variants.nlora import NLORA_PAPER, MiddleParams


class Slora(CoreMatrixVariant):
    name = "slora"
    title = "SLoRA (structured LoRA)"
    summary = "LoRA with a small trained square matrix between its two thin matrices."
    description = (
        "SLoRA adds a small square matrix between LoRA's two thin matrices and trains all three. The extra "
        "matrix costs very few parameters but lets the update mix its directions more freely, which the "
        "paper found to train faster and reach better accuracy than plain LoRA. It starts from random "
        "numbers with the update at zero, like LoRA, and is saved as an ordinary LoRA adapter."
    )
    when_to_use = "A drop-in alternative to LoRA; NLoRA is the same with a data-free, faster-converging init."
    paper = NLORA_PAPER
    Params = MiddleParams

    def init_layer(self, name: str, weight: Any, rank: int, ctx: BuildContext, prepared: Any) -> LayerInit:
        """A, N Kaiming-uniform (a = √5, as nn.Linear), B = 0: ΔW starts at zero."""
        m, n = weight.shape
        a = kaiming_uniform(rank, n, weight.device)
        core = kaiming_uniform(rank, rank, weight.device)
        return LayerInit(lora_A=a, lora_core=core, lora_B=torch.zeros(m, rank, device=weight.device))


VARIANT = Slora
