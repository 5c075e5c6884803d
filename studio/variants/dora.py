"""DoRA (Liu et al., 2024): split each weight into magnitude and direction; LoRA moves the direction."""

from __future__ import annotations

from typing import Any

from studio.variants.base import BuildContext, Paper
from studio.variants.peft_common import PeftVariant


class Dora(PeftVariant):
    name = "dora"
    title = "DoRA (weight-decomposed)"
    summary = "Learns a per-column magnitude plus a LoRA update of the direction of each weight."
    description = (
        "DoRA looks at every weight matrix as a length (magnitude) and a direction. It learns the length "
        "directly and changes the direction with a LoRA update, which behaves more like full fine-tuning "
        "and often gives better quality at the same rank, at a somewhat slower training speed."
    )
    when_to_use = "When LoRA quality falls short at small ranks and a ~20% slower training step is acceptable."
    paper = Paper("DoRA: Weight-Decomposed Low-Rank Adaptation", 2024, "2402.09353")
    export_exact = False  # ΔW rescales whole columns of W0: a plain LoRA reproduces it only at full rank

    def peft_config(self, ctx: BuildContext) -> Any:
        return self.lora_config(ctx, use_dora=True)


VARIANT = Dora
