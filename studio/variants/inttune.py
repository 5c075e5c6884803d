"""IntTune (Guo et al., 2025): NLoRA's Nyström init, training only the r × r middle matrix (spec §7)."""

from __future__ import annotations

from typing import Any

from studio.variants._core_matrix import CoreMatrixVariant, LayerInit
from studio.variants.base import BuildContext, VariantPreset
from studio.variants.nlora import NLORA_PAPER, NloraParams, nystrom_init

# Presets (issue 11): the official settings are the defaults; the small-model one is what the studio
# measured on SmolLM2-135M (docs/results/variant_comparison.md, docs/variants/inttune.md).
INTTUNE_PRESETS = (
    VariantPreset(
        "official",
        "Official (NLoRA code)",
        "The official inttune.py settings (LLaMA-2-7B, the defaults): W0 left unchanged, so the model starts at "
        "W0 + s·B·N·A. Right for large models with small weights.",
        {"residual": False},
    ),
    VariantPreset(
        "small-model",
        "Small models (residual)",
        "For models of a few hundred million parameters: subtract the initial update so training starts exactly "
        "at the base model. On SmolLM2-135M (30 Alpaca steps) the official init ended at a loss of 19.7; with the "
        "residual IntTune reached validation 1.677 (LoRA 1.713).",
        {"residual": True},
    ),
)


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
    presets = INTTUNE_PRESETS
    trainable = ("lora_core",)

    def init_layer(self, name: str, weight: Any, rank: int, ctx: BuildContext, prepared: Any) -> LayerInit:
        return nystrom_init(weight, rank, self.params.core, self.params.residual)


VARIANT = IntTune
