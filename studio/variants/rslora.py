"""rsLoRA (Kalajdzievski, 2023): scale the update by alpha/sqrt(r) so high ranks keep learning."""

from __future__ import annotations

from typing import Any

from studio.variants.base import BuildContext, Paper
from studio.variants.peft_common import PeftVariant


class RsLora(PeftVariant):
    name = "rslora"
    title = "rsLoRA (rank-stabilised)"
    summary = "LoRA with the update scaled by alpha/sqrt(r), so large ranks train as well as small ones."
    description = (
        "Exactly LoRA, with one change to how strongly the learned update is applied. Plain LoRA divides "
        "by the rank, which makes high-rank adapters learn very slowly; rsLoRA divides by the square root "
        "of the rank instead, so raising the rank actually buys more quality."
    )
    when_to_use = "When you want a high rank (32 and more) and plain LoRA does not improve with it."
    paper = Paper("A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", 2023, "2312.03732")

    def peft_config(self, ctx: BuildContext) -> Any:
        return self.lora_config(ctx, use_rslora=True)


VARIANT = RsLora
