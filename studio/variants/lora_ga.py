"""LoRA-GA (Wang et al., 2024): initialise LoRA from the SVD of the full-model gradient."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from studio.variants.base import BuildContext, Paper, VariantParams
from studio.variants.peft_common import MutatedInitVariant


class LoraGaParams(VariantParams):
    calibration_batches: int = Field(
        8, ge=1, le=1024, description="Training batches whose gradients are averaged to choose the start."
    )
    direction: Literal["ArB2r", "ArBr", "A2rBr", "random"] = Field(
        "ArB2r", description="Which gradient singular vectors go to A and to B (ArB2r is the paper's choice)."
    )
    scale: Literal["stable", "weight_svd", "gd_scale", "unit"] = Field(
        "stable", description="How the initial factors are scaled (stable is the paper's choice)."
    )
    stable_gamma: int = Field(16, ge=1, le=1024, description="Gamma of the stable scaling.")


class LoraGa(MutatedInitVariant):
    name = "lora_ga"
    title = "LoRA-GA (gradient-aligned init)"
    summary = "Starts LoRA in the direction full fine-tuning would take first, from a few gradient batches."
    description = (
        "Before training, LoRA-GA runs a few batches of your data through the model and looks at which "
        "direction full fine-tuning would push each weight. The adapter starts aligned with that direction, "
        "so the first steps already make real progress and training converges several times faster. The "
        "saved adapter is converted so it works on the unchanged base model (at twice the rank)."
    )
    when_to_use = "When training time is short and you want LoRA to converge like full fine-tuning."
    paper = Paper("LoRA-GA: Low-Rank Adaptation with Gradient Approximation", 2024, "2407.05000")
    Params = LoraGaParams

    def peft_config(self, ctx: BuildContext) -> Any:
        from peft import LoraGAConfig

        p = self.params
        ga = LoraGAConfig(direction=p.direction, scale=p.scale, stable_gamma=p.stable_gamma)
        return self.lora_config(ctx, init_lora_weights="lora_ga", lora_ga_config=ga)

    def build(self, ctx: BuildContext) -> Any:
        from peft import get_peft_model
        from peft.tuners.lora.loraga import preprocess_loraga

        config = self.peft_config(ctx)
        batches = list(ctx.calibration_batches(self.params.calibration_batches))

        def train_step() -> None:
            # Mean gradient over the calibration batches (PEFT divides by the hook count).
            for batch in batches:
                ctx.model(**batch).loss.backward()

        preprocess_loraga(ctx.model, config, train_step)
        ctx.log(f"LoRA-GA: gradients estimated on {len(batches)} batches")
        model = get_peft_model(ctx.model, config)
        for module in ctx.model.modules():  # the gradient estimates are no longer needed
            if hasattr(module, "_peft_loraga_grad"):
                del module._peft_loraga_grad
        self.after_wrap(model, ctx)
        return model


VARIANT = LoraGa
