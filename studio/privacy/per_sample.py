"""Per-sample gradients of the trainable LoRA tensors, and their clipping to a global norm.

``torch.func.vmap(grad(functional_call))`` runs the model once per sample with only the trainable
tensors (lora_A and lora_B, or lora_B alone when A is frozen as in FFA-LoRA) as function inputs, so
per-sample gradients exist only for them. The loss is the studio's own (:func:`loss_sum`, labels with
IGNORE_INDEX on prompt and pad tokens), averaged over each sample's target tokens.

Under vmap the model cannot inspect its attention mask (transformers skips the mask when it is all
ones, a data-dependent branch vmap refuses), so each sample gets a ready 4-D additive mask that
transformers passes through untouched: causal-and-padding for decoders, padding-only for encoders.
:func:`mask_style` picks the one that reproduces the model's own logits on a probe row.
"""

from __future__ import annotations

import warnings
from typing import Any

from studio.training.losses import loss_sum
from studio.training.tokenise import IGNORE_INDEX

# Added to norms before dividing, as Opacus does, so a zero gradient never divides by zero.
NORM_EPS = 1e-6


def trainable_parameters(model: Any) -> dict[str, Any]:
    """The tensors DP-SGD updates: every parameter with requires_grad (the LoRA factors), by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def four_d_mask(attention_mask: Any, causal: bool, dtype: Any) -> Any:
    """(B, 1, T, T) additive mask from a (B, T) padding mask: 0 where a query may attend, the dtype's min elsewhere."""
    import torch

    keys = attention_mask.bool()[:, None, None, :]
    width = attention_mask.shape[-1]
    if causal:
        lower = torch.ones(width, width, dtype=torch.bool, device=attention_mask.device).tril()
        keys = keys & lower[None, None]
    else:
        keys = keys.expand(-1, 1, width, width)
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(keys, zero, torch.finfo(dtype).min)


def _model_dtype(model: Any) -> Any:
    import torch

    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def mask_style(model: Any, batch: dict[str, Any]) -> bool:
    """True when the model attends causally (decoder), False when bidirectionally; checked on one probe row.

    Raises ValueError when neither 4-D mask reproduces the model's own logits (a model that needs
    something else, e.g. packed rows or left padding with a sliding window).
    """
    import torch

    probe = {"input_ids": batch["input_ids"][:1], "attention_mask": batch["attention_mask"][:1]}
    dtype = _model_dtype(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = model(**probe).logits.float()
            for causal in (True, False):
                mask = four_d_mask(probe["attention_mask"], causal, dtype)
                got = model(input_ids=probe["input_ids"], attention_mask=mask).logits.float()
                keep = probe["attention_mask"].bool()
                if want.dim() == 3:  # token logits: compare real tokens only
                    same = torch.allclose(want[keep], got[keep], rtol=1e-4, atol=1e-4)
                else:
                    same = torch.allclose(want, got, rtol=1e-4, atol=1e-4)
                if same:
                    return causal
    finally:
        model.train(was_training)
    raise ValueError(
        "per-sample gradients: neither a causal nor a padding-only 4-D mask reproduces this model's logits"
    )


def per_sample_loss(model: Any, params: dict[str, Any], sample: dict[str, Any], task: str) -> Any:
    """Loss of ONE sample (no batch dim; ``attention_mask`` already 4-D without its batch dim) with ``params``.

    Causal LM: summed cross-entropy over the sample's labelled tokens divided by their count (so a
    long row does not dominate the clipped sum); classification: the row's cross-entropy.
    """
    from torch.func import functional_call

    batch = {key: value.unsqueeze(0) for key, value in sample.items()}

    def call(**inputs: Any) -> Any:
        return functional_call(model, params, (), inputs, strict=False)

    total, _ = loss_sum(call, batch, task)
    if task == "classification":
        return total
    count = (batch["labels"][:, 1:] != IGNORE_INDEX).sum().clamp(min=1)
    return total / count


def per_sample_grads(
    model: Any, batch: dict[str, Any], task: str, causal: bool, chunk_size: int | None = None
) -> tuple[dict[str, Any], Any]:
    """({name: (B, *shape) gradient}, (B,) losses) of every sample in ``batch`` over the trainable tensors.

    ``batch`` is a right-padded collated batch (input_ids, attention_mask, labels). ``chunk_size``
    bounds how many samples vmap runs at once (memory); None runs them all together.
    """
    from torch.func import grad_and_value, vmap

    live = trainable_parameters(model)
    params = {name: p.detach() for name, p in live.items()}
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": four_d_mask(batch["attention_mask"], causal, _model_dtype(model)),
        "labels": batch["labels"],
    }

    def one(p: dict[str, Any], sample: dict[str, Any]) -> Any:
        return per_sample_loss(model, p, sample, task)

    compute = vmap(grad_and_value(one), in_dims=(None, 0), randomness="different", chunk_size=chunk_size)
    with warnings.catch_warnings():
        # SDPA's CPU backward has no batching rule yet: vmap falls back to a loop and warns each call.
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        grads, losses = compute(params, inputs)
    return grads, losses


def per_sample_norms(grads: dict[str, Any]) -> Any:
    """(B,) global L2 norm of each sample's gradient over all tensors."""
    import torch

    squares = [g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in grads.values()]
    return torch.stack(squares, dim=0).sum(dim=0).sqrt()


def clip_factors(norms: Any, max_grad_norm: float) -> Any:
    """min(1, C / (‖g_i‖ + 1e-6)) per sample: scaled norms are then ≤ C (C = inf leaves every sample unscaled)."""
    return (max_grad_norm / (norms + NORM_EPS)).clamp(max=1.0)


def clipped_sum(grads: dict[str, Any], max_grad_norm: float) -> tuple[dict[str, Any], Any]:
    """({name: Σ_i clip_i · g_i}, (B,) norms before clipping)."""
    import torch

    norms = per_sample_norms(grads)
    factors = clip_factors(norms, max_grad_norm)
    summed = {name: torch.einsum("b,b...->...", factors, g) for name, g in grads.items()}
    return summed, norms
