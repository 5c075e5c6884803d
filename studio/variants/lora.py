"""Plain LoRA (Hu et al., 2021): the reference every other variant is compared with."""

from __future__ import annotations

from typing import Any

from studio.variants.base import BuildContext, Paper
from studio.variants.peft_common import PeftVariant


class Lora(PeftVariant):
    name = "lora"
    title = "LoRA"
    summary = "Learn a small low-rank update next to each frozen weight matrix."
    description = (
        "The base model stays untouched. Next to each of its large weight matrices LoRA learns two "
        "thin matrices whose product is a correction to that weight. Only these small matrices are "
        "trained, so training needs far less memory and the result is a file of a few megabytes that "
        "can be switched on and off on top of the base model."
    )
    when_to_use = "The default choice: start here, then try a variant if you need more quality or fewer parameters."
    paper = Paper("LoRA: Low-Rank Adaptation of Large Language Models", 2021, "2106.09685")

    def peft_config(self, ctx: BuildContext) -> Any:
        return self.lora_config(ctx)


VARIANT = Lora
