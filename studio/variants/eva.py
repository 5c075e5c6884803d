"""EVA (Paischer et al., 2024): initialise LoRA from the principal directions of layer inputs."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from studio.errors import StudioError
from studio.variants.base import BuildContext, Paper, VariantParams
from studio.variants.peft_common import PeftVariant, tuner_layers


class EvaParams(VariantParams):
    r: int = Field(16, ge=1, le=1024, description="Average rank; EVA redistributes it across layers.")
    lora_alpha: float = Field(1.0, gt=0, le=8192, description="Scaling numerator (EVA's default is 1).")
    rho: float = Field(
        2.0, ge=1.0, le=10.0, description="A layer may get up to rho × r components (1 = no redistribution)."
    )
    tau: float = Field(0.99, ge=0.0, le=1.0, description="Stop the incremental SVD once components are this stable.")
    calibration_batches: int = Field(
        16, ge=1, le=4096, description="Training batches cycled through while computing the SVD of layer inputs."
    )
    whiten: bool = Field(False, description="Whiten the singular vectors.")


class Eva(PeftVariant):
    name = "eva"
    title = "EVA (explained-variance init)"
    summary = "Starts LoRA from what your data actually feeds each layer, and gives busy layers more rank."
    description = (
        "Before training, EVA passes some of your data through the model and finds, for every adapted "
        "layer, the input directions that carry most of the signal. The adapter starts from those "
        "directions, and layers whose inputs are richer receive more rank while the total stays the same. "
        "The chart shows this allocation."
    )
    when_to_use = "When you want a data-aware start and an automatic rank allocation without extra training cost."
    paper = Paper("One Initialization to Rule them All: Explained Variance Adaptation", 2024, "2410.07170")
    Params = EvaParams
    changes_rank = True  # decided once at init; reported so the UI can show the allocation

    def peft_config(self, ctx: BuildContext, use_label_mask: bool = True) -> Any:
        from peft import EvaConfig

        p = self.params
        eva = EvaConfig(rho=p.rho, tau=p.tau, whiten=p.whiten, use_label_mask=use_label_mask)
        return self.lora_config(ctx, init_lora_weights="eva", eva_config=eva)

    def build(self, ctx: BuildContext) -> Any:
        from peft import get_peft_model, initialize_lora_eva_weights
        from peft.tuners.lora.eva import forward_fn_dict

        p = self.params
        batches = list(ctx.calibration_batches(p.calibration_batches))
        # EVA needs at least as many tokens per batch as components it estimates (else PEFT skips the
        # batch and, cycling the data, never finishes). Response tokens are preferred when enough.
        need = round(p.r * p.rho)
        tokens = min(int(b["attention_mask"].sum()) for b in batches)
        responses = min(int((b["labels"] != -100).sum()) for b in batches) if b_is_tokens(batches) else 0
        if tokens < need:
            raise StudioError(
                f"EVA needs at least {need} tokens per batch (r × rho) but a batch has only {tokens}; "
                "raise the batch size or lower r or rho"
            )
        config = self.peft_config(ctx, use_label_mask=ctx.task == "causal-lm" and responses >= need)
        model = get_peft_model(ctx.model, config, low_cpu_mem_usage=True)
        calls = {"n": 0}
        limit = max(200, 50 * len(batches))

        def forward(model_: Any, inputs: dict) -> Any:
            calls["n"] += 1
            if calls["n"] > limit:
                raise StudioError(f"EVA did not converge in {limit} batches; lower tau or give more data")
            return forward_fn_dict(model_, inputs)

        initialize_lora_eva_weights(model, batches, forward_fn=forward, show_progress_bar=False)
        total = sum(self.rank_allocation(model).values())
        ctx.log(f"EVA: converged after {calls['n']} forward passes; {total} rank components redistributed")
        return model

    def rank_allocation(self, model: Any) -> dict[str, int]:
        return {name: int(layer.r["default"]) for name, layer in tuner_layers(model).items()}


def b_is_tokens(batches: list[dict]) -> bool:
    """True when labels are per token (causal LM) rather than one class per row."""
    return bool(batches) and batches[0]["labels"].dim() == 2


VARIANT = Eva
