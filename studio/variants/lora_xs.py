"""LoRA-XS (Bałazy et al., 2024): frozen SVD factors of W0 around a trained r × r core (spec §6)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from studio.variants._core_matrix import CoreMatrixVariant, LayerInit, SvdParams, truncated_svd
from studio.variants.base import BuildContext, Paper


class LoraXsParams(SvdParams):
    r: int = Field(64, ge=1, le=1024, description="Rank r: size of the trained r × r core (official math runs use 64).")
    core_init_std: float = Field(
        1e-5, ge=0.0, le=1.0, description="Standard deviation of the Gaussian init of the core R (official 1e-5)."
    )


class LoraXs(CoreMatrixVariant):
    name = "lora_xs"
    title = "LoRA-XS"
    summary = "Train only a tiny r × r matrix between frozen SVD factors of each weight."
    description = (
        "LoRA-XS first takes each large weight matrix of the model apart into its most important "
        "directions (a singular value decomposition) and keeps the top few of them fixed. Only a tiny "
        "square matrix that mixes these directions is trained, so the number of trained numbers no longer "
        "depends on the model's width: a 7-billion-parameter model can be adapted with more than a hundred "
        "times fewer trained numbers than LoRA. The result is saved as an ordinary LoRA adapter."
    )
    when_to_use = (
        "When the adapter must be extremely small (many adapters per user or per task); it usually needs "
        "a higher learning rate than LoRA. LoRA-SB trains the same tiny matrix from a better start."
    )
    paper = Paper("LoRA-XS: Low-Rank Adaptation with Extremely Small Number of Parameters", 2024, "2405.17604")
    Params = LoraXsParams
    trainable = ("lora_core",)

    def init_layer(self, name: str, weight: Any, rank: int, ctx: BuildContext, prepared: Any) -> LayerInit:
        """B = U_r, A = Σ_r V_rᵀ from the truncated SVD of W0; R ~ N(0, std²); W0 unchanged."""
        p = self.params
        u, s, vh = truncated_svd(weight.float(), rank, p.svd_method, p.svd_iters, p.svd_seed)
        # The core draws from the global RNG, seeded by the engine before build (deterministic).
        core = torch.randn(rank, rank, device=weight.device, dtype=torch.float32) * p.core_init_std
        return LayerInit(lora_A=s[:, None] * vh, lora_core=core, lora_B=u)


VARIANT = LoraXs
