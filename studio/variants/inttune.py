"""IntTune (Guo et al., 2025): NLoRA's Nyström init, training only the r × r middle matrix (spec §7)."""

from __future__ import annotations

from typing import Any

from studio.variants._core_matrix import CoreMatrixVariant, LayerInit
from studio.variants.base import BuildContext
from studio.variants.nlora import NLORA_PAPER, NloraParams, nystrom_init


class IntTune(CoreMatrixVariant):
    name = "inttune"
    title = "IntTune"
    summary = "NLoRA with only its small middle matrix trained: about 1% of LoRA's parameters."
    description = (
        "IntTune starts exactly like NLoRA, from pieces of the pretrained weight, but then keeps the two thin "
        "matrices fixed and trains only the small square matrix between them. That is about a hundred times "
        "fewer trained numbers than LoRA, which makes training lighter and the adapter tiny, while the "
        "paper reports better average quality than LoRA on text generation tasks."
    )
    when_to_use = "When the adapter must be tiny and cheap to train; try NLoRA if quality falls short."
    paper = NLORA_PAPER
    Params = NloraParams
    trainable = ("lora_core",)

    def init_layer(self, name: str, weight: Any, rank: int, ctx: BuildContext, prepared: Any) -> LayerInit:
        return nystrom_init(weight, rank, self.params.core, self.params.residual)


VARIANT = IntTune
