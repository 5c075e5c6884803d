"""NLoRA (Guo et al., 2025): SLoRA's middle matrix, initialised from W0 by the Nyström method (spec §7)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from studio.variants._core_matrix import FACTORS, CoreMatrixVariant, CoreParams, LayerInit
from studio.variants.base import BuildContext, OptimConfig, Optimization, Paper, VariantPreset, default_optimization

NLORA_PAPER = Paper("NLoRA: Nyström-Initiated Low-Rank Adaptation for Large Language Models", 2025, "2502.14482")


class MiddleParams(CoreParams):
    """Official defaults of the NLoRA repository (LLaMA-2-7B): r = α = 128, no dropout."""

    r: int = Field(128, ge=1, le=1024, description="Rank r of B (m × r), N (r × r) and A (r × n).")
    lora_alpha: float | None = Field(
        128.0,
        gt=0,
        le=8192,
        description="Scaling numerator: the update is multiplied by alpha / r. Empty = alpha equals r (scale 1).",
    )


class NloraParams(MiddleParams):
    core: Literal["block", "pinv"] = Field(
        "block",
        description="block = N starts as the r × r corner of W0 (official code); pinv = its pseudo-inverse "
        "(textbook Nyström, so that B·N·A approximates W0).",
    )
    residual: bool = Field(
        False,
        description="Subtract the initial s·B·N·A from the base weight so the model starts exactly at the base "
        "(the exported adapter then has rank 2r). Off in the official code, where the initial update is assumed "
        "small; on small models it is not (SmolLM2-135M at r 128: loss 2.1 -> 17 at step 0): the small-model "
        "preset turns it on.",
    )


class NloraTrainParams(NloraParams):
    lr_scale: float = Field(
        1.0,
        gt=0,
        le=10,
        description="Multiplies the run's learning rate for A, N and B (1 = the run's, as in the official code). "
        "They start as slices of the pretrained weight, so one optimizer step moves the update s·B·N·A far more "
        "than it moves a randomly started LoRA: on SmolLM2-135M at the run's 2e-4 the loss rose (validation 2.61 "
        "after 30 Alpaca steps), at 0.1× it fell fastest of all variants (1.58 vs LoRA's 1.71); the small-model "
        "preset uses 0.1.",
    )


# Presets (issue 11): the official settings are the defaults; the small-model ones are what the studio
# measured on SmolLM2-135M (docs/results/variant_comparison.md, docs/variants/nlora.md).
NLORA_PRESETS = (
    VariantPreset(
        "official",
        "Official (NLoRA code)",
        "The official repository's settings (LLaMA-2-7B, the defaults): W0 left unchanged, so the model starts "
        "at W0 + s·B·N·A, and one learning rate for everything. Right for large models with small weights.",
        {"residual": False, "lr_scale": 1.0},
    ),
    VariantPreset(
        "small-model",
        "Small models (residual, 0.1× lr)",
        "For models of a few hundred million parameters: subtract the initial update so training starts exactly "
        "at the base model, and train A, N, B at 0.1× the run's learning rate. On SmolLM2-135M (30 Alpaca steps, "
        "lr 2e-4) the official init started at a loss of about 17 instead of 2.1; with these settings NLoRA "
        "reached validation 1.577, the best of all variants (LoRA 1.713).",
        {"residual": True, "lr_scale": 0.1},
    ),
)


def nystrom_init(weight: Any, rank: int, core: str, residual: bool) -> LayerInit:
    """A = W0[:r, :], B = W0[:, :r], N = W0[:r, :r] (``block``) or its pseudo-inverse (``pinv``)."""
    w = weight.detach().float()
    corner = w[:rank, :rank]
    if core == "pinv":
        corner = torch.linalg.pinv(corner.double()).float()
    elif core != "block":
        raise ValueError(f"unknown NLoRA core {core!r}")
    return LayerInit(
        lora_A=w[:rank, :].clone(), lora_core=corner.clone(), lora_B=w[:, :rank].clone(), residual=residual
    )


class Nlora(CoreMatrixVariant):
    name = "nlora"
    title = "NLoRA (Nyström init)"
    summary = "A LoRA with a small middle matrix, started from slices of the pretrained weight."
    description = (
        "NLoRA puts a small square matrix between LoRA's two thin matrices and starts all three from pieces "
        "of the pretrained weight itself (its first rows, first columns and their overlap, the Nyström "
        "method) instead of random numbers. This costs nothing to compute, unlike inits that need a "
        "singular value decomposition, and makes training converge faster than plain LoRA. All three "
        "matrices are trained; the result is saved as an ordinary LoRA adapter."
    )
    when_to_use = "Instead of LoRA when you want faster convergence at the same rank and no costly init."
    paper = NLORA_PAPER
    Params = NloraTrainParams
    presets = NLORA_PRESETS

    def configure_optimization(self, model: Any, cfg: OptimConfig) -> Optimization:
        """AdamW with A, N and B at ``lr_scale`` × the run's learning rate (heads at the run's), one schedule."""
        factors, others = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (factors if name.rsplit(".", 1)[-1] in FACTORS else others).append(param)
        groups = [{"params": factors, "lr": cfg.learning_rate * self.params.lr_scale}]
        if others:
            groups.append({"params": others})
        return default_optimization(groups, cfg)

    def init_layer(self, name: str, weight: Any, rank: int, ctx: BuildContext, prepared: Any) -> LayerInit:
        return nystrom_init(weight, rank, self.params.core, self.params.residual)


VARIANT = Nlora
