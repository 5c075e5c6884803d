"""LoRA+ (Hayou et al., 2024): give B a larger learning rate than A."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from studio.variants.base import BuildContext, OptimConfig, Optimization, Paper, VariantParams, lr_lambda
from studio.variants.peft_common import PeftVariant


class LoraPlusParams(VariantParams):
    loraplus_lr_ratio: float = Field(
        16.0, ge=1.0, le=1024.0, description="Learning rate of B divided by that of A (the paper recommends 16)."
    )


class LoraPlus(PeftVariant):
    name = "loraplus"
    title = "LoRA+"
    summary = "LoRA whose B matrices learn faster than A (learning-rate ratio, 16 by default)."
    description = (
        "The same adapter as LoRA, trained differently: the second of its two small matrices gets a much "
        "larger learning rate than the first. This simple change makes training faster and often a bit "
        "better, at no extra cost."
    )
    when_to_use = "A free improvement over LoRA for most tasks; try it when LoRA converges slowly."
    paper = Paper("LoRA+: Efficient Low Rank Adaptation of Large Models", 2024, "2402.12354")
    Params = LoraPlusParams

    def peft_config(self, ctx: BuildContext) -> Any:
        return self.lora_config(ctx)

    def configure_optimization(self, model: Any, cfg: OptimConfig) -> Optimization:
        import torch
        from peft.optimizers import create_loraplus_optimizer

        optimizer = create_loraplus_optimizer(
            model=model,
            optimizer_cls=torch.optim.AdamW,
            lr=cfg.learning_rate,
            loraplus_lr_ratio=self.params.loraplus_lr_ratio,
            weight_decay=cfg.weight_decay,
            betas=cfg.betas,
            eps=cfg.eps,
        )
        # One multiplier for every group keeps the A:B ratio fixed through warmup and decay.
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(cfg.total_steps, cfg.warmup_steps, cfg.scheduler)
        )
        return Optimization([optimizer], [scheduler])


VARIANT = LoraPlus
