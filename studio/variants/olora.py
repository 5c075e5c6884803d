"""OLoRA (Büyükakyüz, 2024): initialise LoRA from an orthonormal QR basis of W."""

from __future__ import annotations

from typing import Any

from studio.variants.base import BuildContext, Paper
from studio.variants.peft_common import MutatedInitVariant


class Olora(MutatedInitVariant):
    name = "olora"
    title = "OLoRA (orthonormal init)"
    summary = "Initialise LoRA from an orthonormal (QR) basis of each weight for faster, steadier training."
    description = (
        "OLoRA starts the adapter from an orthonormal basis of each weight matrix, computed with a QR "
        "decomposition, and subtracts that part from the frozen weight. The orthonormal start keeps "
        "training well conditioned and often converges faster. The saved adapter is converted so it works "
        "on the unchanged base model (at twice the rank)."
    )
    when_to_use = "An alternative to PiSSA when you want a fast-converging start that is cheap to compute."
    paper = Paper("OLoRA: Orthonormal Low-Rank Adaptation of Large Language Models", 2024, "2406.01775")

    def peft_config(self, ctx: BuildContext) -> Any:
        return self.lora_config(ctx, init_lora_weights="olora")


VARIANT = Olora
