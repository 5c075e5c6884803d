"""PiSSA (Meng et al., 2024): start the adapter from the principal singular components of W."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from studio.variants.base import BuildContext, Paper, VariantParams
from studio.variants.peft_common import MutatedInitVariant


class PissaParams(VariantParams):
    lora_dropout: float = Field(0.0, ge=0.0, le=0.9, description="Dropout on the adapter's input (PiSSA uses 0).")
    svd_niter: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Iterations of a fast randomised SVD; empty = exact SVD (slower on big models, deterministic).",
    )


class Pissa(MutatedInitVariant):
    name = "pissa"
    title = "PiSSA (principal singular values)"
    summary = "Initialise LoRA with the most important directions of each weight; train those, freeze the rest."
    description = (
        "Instead of starting from zero, PiSSA moves the most important part of every weight matrix (its top "
        "singular directions) into the adapter and trains that part, leaving the rest frozen. Training "
        "usually converges faster than with LoRA. The saved adapter is converted so that it works on the "
        "unchanged base model like any LoRA (at twice the rank)."
    )
    when_to_use = "When training runs are short and you want faster convergence than LoRA."
    paper = Paper("PiSSA: Principal Singular Values and Singular Vectors Adaptation", 2024, "2404.02948")
    Params = PissaParams

    def peft_config(self, ctx: BuildContext) -> Any:
        niter = self.params.svd_niter
        return self.lora_config(ctx, init_lora_weights="pissa" if niter is None else f"pissa_niter_{niter}")


VARIANT = Pissa
