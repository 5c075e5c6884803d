"""MiSS (Kang & Yin, 2024; successor of Bone): one shared block per weight, expanded by slicing."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from studio.variants.base import BuildContext, Paper, VariantParams
from studio.variants.peft_common import PeftVariant


class MissParams(VariantParams):
    r: int = Field(16, ge=1, le=1024, description="Size of the trained block along the input dimension (even).")
    lora_alpha: float = Field(16.0, gt=0, le=8192, description="Not used by MiSS.")
    lora_dropout: float = Field(0.0, ge=0.0, le=0.9, description="Dropout on the adapter's input.")
    init_weights: Literal["balance", "bat", "mini"] = Field(
        "balance", description="balance: the efficient default; bat: updates that mix shards; mini: fewer parameters."
    )
    mini_r: int = Field(1, ge=1, le=4096, description="Block size along the output dimension for the 'mini' mode.")


class Miss(PeftVariant):
    name = "miss"
    title = "MiSS (shard sharing)"
    summary = "Trains one small block per layer that is shared across slices of the weight (Bone's successor)."
    description = (
        "MiSS does not use two thin matrices like LoRA. It trains one small block per layer and applies it "
        "to every slice of the layer's input, which gives a cheap, expressive update that trains fast. "
        "The adapter is saved in PEFT's MiSS format; it can also be exported as an (approximate) plain "
        "LoRA at a chosen rank, with the approximation error reported."
    )
    when_to_use = "When you want fewer trainable parameters than LoRA with comparable or better quality."
    paper = Paper("MiSS: Balancing LoRA Performance and Efficiency with Simple Shard Sharing", 2024, "2409.15371")
    Params = MissParams
    export_exact = False  # ΔW has block structure, generally of full rank

    def peft_config(self, ctx: BuildContext) -> Any:
        from peft import MissConfig

        p = self.params
        init: Any = True if p.init_weights == "balance" else p.init_weights
        return MissConfig(
            r=p.r,
            miss_dropout=p.lora_dropout,
            mini_r=p.mini_r,
            init_weights=init,
            target_modules=list(ctx.target_modules),
            modules_to_save=list(ctx.modules_to_save) or None,
            task_type=ctx.peft_task_type,
        )

    def final_ranks(self, model: Any) -> dict[str, int]:
        from studio.variants.peft_common import tuner_layers

        return {name: int(layer.miss_r["default"]) for name, layer in tuner_layers(model).items()}


VARIANT = Miss
