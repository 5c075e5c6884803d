"""LoRA-SB (Ponkshe et al., 2024): LoRA-XS initialised from the first full fine-tuning step (spec §6)."""

from __future__ import annotations

import time
from typing import Any

import torch
from pydantic import Field

from studio.variants._core_matrix import CoreMatrixVariant, LayerInit, SvdParams, scaling, truncated_svd
from studio.variants.base import BuildContext, Paper


class LoraSbParams(SvdParams):
    r: int = Field(
        96,
        ge=1,
        le=1024,
        description="Rank r: size of the trained r × r core (96 for 7-8B LLMs, 24 for RoBERTa-large).",
    )
    grad_samples: int = Field(
        50,
        ge=1,
        le=100_000,
        description="Training samples whose gradients estimate the first update (about 50 for maths, 170 for "
        "commonsense, 2 for GLUE).",
    )


def _take(batch: dict[str, Any], count: int) -> dict[str, Any]:
    """The first ``count`` samples of a micro-batch (tensors sliced on the batch dimension)."""
    return {k: v[:count] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in batch.items()}


def _batch_size(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise ValueError("calibration batch has no tensor to count samples from")


def summed_gradients(model: Any, weights: dict[str, Any], batches: Any, samples: int) -> tuple[dict[str, Any], int]:
    """Σ over the first ``samples`` samples of ∂(batch loss / batch size)/∂W for every W in ``weights``.

    As in the official ``estimate_and_process_grads_torch_3``: each micro-batch (cut to the samples
    still needed) contributes the gradient of its mean loss divided by its size. Only the target
    weights require grad meanwhile (their gradients do not depend on that); every other flag and
    the RNG state are restored afterwards. Returns ({name: Σg (fp32)}, samples used).
    """
    flags = {p: p.requires_grad for p in model.parameters()}
    stale = {name: w.grad for name, w in weights.items()}
    used = 0
    devices = [p.device for p in weights.values() if p.device.type == "cuda"][:1]
    try:
        for param in model.parameters():
            param.requires_grad_(False)
        for w in weights.values():
            w.grad = None
            w.requires_grad_(True)
        with torch.random.fork_rng(devices=devices):
            for batch in batches:
                take = min(_batch_size(batch), samples - used)
                loss = model(**_take(batch, take)).loss
                (loss / take).backward()  # gradients accumulate in .grad: that is the sum
                used += take
                if used >= samples:
                    break  # before the generator collates another batch
        grads = {
            name: w.grad.detach().float() if w.grad is not None else torch.zeros_like(w, dtype=torch.float32)
            for name, w in weights.items()
        }
    finally:
        for name, w in weights.items():
            w.grad = stale[name]
        for param, flag in flags.items():
            param.requires_grad_(flag)
    return grads, used


def first_step_lr(ctx: BuildContext) -> float:
    """η₁ = lr / warmup_steps: the learning rate of Adam's first step under linear warmup (lr when no warmup)."""
    return float(ctx.learning_rate) / max(1, int(ctx.warmup_steps))


class LoraSb(CoreMatrixVariant):
    name = "lora_sb"
    title = "LoRA-SB"
    summary = "LoRA-XS started from the best low-rank copy of full fine-tuning's first step."
    description = (
        "LoRA-SB trains the same tiny square matrix as LoRA-XS, but chooses the fixed directions around it "
        "from your data: before training it looks at a few dozen examples, works out the first step full "
        "fine-tuning would take, and starts the adapter as the closest low-rank copy of that step. Training "
        "then keeps following full fine-tuning's directions, so it needs 27 to 90 times fewer trained numbers "
        "than LoRA for the same or better quality, and almost no tuning of the learning rate."
    )
    when_to_use = (
        "When you want LoRA quality (or better) with a tiny adapter; it costs one short gradient pass over "
        "the first examples before training starts."
    )
    paper = Paper(
        "Initialization Using Update Approximation Is a Silver Bullet for Extremely Efficient Low-Rank Fine-Tuning",
        2024,
        "2411.19557",
    )
    Params = LoraSbParams
    trainable = ("lora_core",)

    def prepare(self, ctx: BuildContext, targets: dict[str, Any]) -> dict[str, Any]:
        """Σg for every target over the first ``grad_samples`` training samples (ΔW₁ is formed per layer)."""
        start = time.perf_counter()
        weights = {name: linear.weight for name, linear in targets.items()}
        # Each micro-batch holds at least one sample: grad_samples batches always suffice.
        grads, used = summed_gradients(
            ctx.model, weights, ctx.calibration_batches(self.params.grad_samples), self.params.grad_samples
        )
        if used == 0:
            raise ValueError("LoRA-SB needs at least one training sample to estimate the gradient")
        ctx.log(
            f"LoRA-SB: gradient estimation on {used} samples took {time.perf_counter() - start:.2f} s "
            f"(eta1 = {first_step_lr(ctx):.3g})"
        )
        return grads

    def init_layer(self, name: str, weight: Any, rank: int, ctx: BuildContext, prepared: Any) -> LayerInit:
        """ΔW₁ = −η₁·sign(Σg); B = U_r, A = V_rᵀ, R = Σ_r / s from its truncated SVD; W0 unchanged."""
        p = self.params
        update = -first_step_lr(ctx) * torch.sign(prepared.pop(name))  # pop: free each gradient once used
        u, s, vh = truncated_svd(update, rank, p.svd_method, p.svd_iters, p.svd_seed)
        return LayerInit(lora_A=vh, lora_core=torch.diag(s) / scaling(p), lora_B=u)


VARIANT = LoraSb
