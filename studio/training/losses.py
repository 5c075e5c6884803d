"""Loss of one micro-batch and the validation pass.

The loss is computed here from the model's outputs (the model is never given labels), so
causal-LM and classification share one path and gradient accumulation can normalise by
the number of target tokens of the whole optimizer step: the accumulated gradient then
equals that of one big batch.

Causal LM, chunked (the default, :class:`LossFunction` with ``chunk_tokens > 0``): the
decoder gives hidden states, only the positions whose next token is labelled are kept,
and they are projected to the vocabulary by the model's own ``lm_head`` ``chunk_tokens``
at a time, so full-vocabulary logits for the whole batch never exist at once:

- a frozen plain ``nn.Linear`` head (the usual case, tied embeddings included) goes
  through :class:`_LinearCrossEntropy`, which computes each chunk's loss and its gradient
  with respect to the hidden states in the forward pass and keeps only that gradient
  (rows × hidden), never the logits;
- any other head (trainable, wrapped by a variant) runs each chunk under activation
  checkpointing, so its logits are recomputed chunk by chunk in the backward pass.

:func:`LossFunction.verify` checks once per run, on a short probe, that ``lm_head(decoder(x))``
equals the model's own logits; models that post-process logits (soft-capping, scaling),
variants that set ``needs_full_logits = True`` and ``chunk_tokens = 0`` use the plain
full-logits loss instead.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from studio.training.tokenise import IGNORE_INDEX


def target_count(batch: dict[str, Any], task: str) -> int:
    """How many targets a micro-batch contributes to the loss (tokens, or rows for classification)."""
    labels = batch["labels"]
    if task == "classification":
        if "sequence_labels" in batch:  # pooled window loss: one target per sequence
            return int(batch["sequence_labels"].shape[0])
        return int(labels.shape[0])
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for the model: a packed batch brings its own mask and position ids."""
    inputs = {"input_ids": batch["input_ids"]}
    if "position_ids" in batch:
        inputs["position_ids"] = batch["position_ids"]
        inputs["attention_mask"] = batch.get("packed_mask")  # None = the model's varlen path
    else:
        inputs["attention_mask"] = batch["attention_mask"]
    return inputs


def loss_sum(model: Any, batch: dict[str, Any], task: str, pooling: str = "mean") -> tuple[Any, Any]:
    """(summed cross-entropy over the batch's targets, logits) of one forward pass (full logits).

    A classification batch with ``sequence``/``sequence_labels`` (pooled window loss) pools its
    windows' logits per sequence (``pooling``: mean or max) and scores each sequence once; the
    logits returned are still per window.
    """
    import torch.nn.functional as F

    from studio.sequences.windows import pool_rows

    extra = {"use_cache": False} if task != "classification" else {}
    out = model(**model_inputs(batch), **extra)
    logits = out.logits.float()
    labels = batch["labels"]
    if task == "classification":
        if "sequence_labels" in batch:  # multiple-instance: one loss per sequence on its pooled logits
            targets = batch["sequence_labels"]
            pooled = pool_rows(logits, batch["sequence"], targets.shape[0], pooling)
            return F.cross_entropy(pooled, targets, reduction="sum"), logits
        if "weight" in batch:  # windows weighted per sequence (tokenise.sequence_weights); weights average 1
            per_row = F.cross_entropy(logits, labels, reduction="none")
            return (per_row * batch["weight"].to(per_row.dtype)).sum(), logits
        return F.cross_entropy(logits, labels, reduction="sum"), logits
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1])
    return F.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"), logits


def _causal_parts(model: Any) -> tuple[Any, Any] | None:
    """(decoder, lm_head) of a causal LM, through PEFT wrappers; None when the model has no such split."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_decoder = getattr(inner, "get_decoder", None)
    get_head = getattr(inner, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    try:
        decoder, head = get_decoder(), get_head()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None or decoder is inner:
        return None
    return decoder, head


def _frozen_linear(head: Any) -> bool:
    import torch

    return type(head) is torch.nn.Linear and not any(p.requires_grad for p in head.parameters())


def _linear_ce_function():
    import torch
    import torch.nn.functional as F

    class _LinearCrossEntropy(torch.autograd.Function):
        """Σ cross-entropy(h W^T + b, targets) over chunks of rows; d/dh computed in the forward pass."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, chunk, dtype):
            rows = hidden.shape[0]
            need_grad = ctx.needs_input_grad[0]
            w = weight if dtype is None else weight.to(dtype)
            b = None if bias is None else (bias if dtype is None else bias.to(dtype))
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad = torch.empty_like(hidden) if need_grad else None
            for start in range(0, rows, chunk):
                h = hidden[start : start + chunk]
                t = targets[start : start + chunk]
                logits = F.linear(h.to(w.dtype), w, b).float()
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                if need_grad:
                    probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                    probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                    grad[start : start + chunk] = (probs.to(w.dtype) @ w).to(hidden.dtype)
                del logits
            ctx.save_for_backward(grad)
            return total

        @staticmethod
        def backward(ctx, grad_output):
            (grad,) = ctx.saved_tensors
            return grad * grad_output.to(grad.dtype), None, None, None, None, None

    return _LinearCrossEntropy


_LINEAR_CE: Any = None


def linear_cross_entropy(hidden: Any, head: Any, targets: Any, chunk: int, dtype: Any = None) -> Any:
    """Summed cross-entropy of ``head(hidden)`` (a frozen nn.Linear) against ``targets``, ``chunk`` rows at a time."""
    import torch

    global _LINEAR_CE
    if _LINEAR_CE is None:
        _LINEAR_CE = _linear_ce_function()
    with torch.autocast(hidden.device.type, enabled=False):
        return _LINEAR_CE.apply(hidden, head.weight, head.bias, targets, chunk, dtype)


def chunked_head_loss(hidden: Any, head: Any, targets: Any, chunk: int) -> Any:
    """Summed cross-entropy of ``head(hidden)`` for any head module, chunks checkpointed when training."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    def piece(h: Any, t: Any) -> Any:
        return F.cross_entropy(head(h).float(), t, reduction="sum")

    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start : start + chunk], targets[start : start + chunk]
        total = total + (checkpoint(piece, h, t, use_reentrant=False) if grad else piece(h, t))
    return total


@dataclass
class LossFunction:
    """The task loss of one micro-batch for a run: chunked over labelled tokens, or full logits."""

    task: str
    chunk_tokens: int = 0
    compute_dtype: Any = None  # autocast dtype of the run (for the fused head)
    decoder: Any = None
    head: Any = None
    reason: str = ""
    pooling: str = "mean"  # classification batches of whole sequences (pooled window loss)

    @classmethod
    def for_model(
        cls,
        model: Any,
        task: str,
        chunk_tokens: int,
        compute_dtype: Any = None,
        variant: Any = None,
        pooling: str = "mean",
    ):
        """The chunked loss when the model allows it, else full logits (``reason`` says why)."""
        if task != "causal-lm":
            return cls(task, 0, compute_dtype, reason="classification uses the pooled logits", pooling=pooling)
        if chunk_tokens <= 0:
            return cls(task, 0, compute_dtype, reason="loss_chunk_tokens = 0")
        if getattr(variant, "needs_full_logits", False):
            return cls(task, 0, compute_dtype, reason=f"the {variant.name} variant needs full logits")
        parts = _causal_parts(model)
        if parts is None:
            return cls(task, 0, compute_dtype, reason="the model has no separate decoder and lm_head")
        return cls(task, chunk_tokens, compute_dtype, parts[0], parts[1], reason="")

    @property
    def chunked(self) -> bool:
        return self.chunk_tokens > 0 and self.decoder is not None

    @property
    def fused(self) -> bool:
        return self.chunked and _frozen_linear(self.head)

    def describe(self) -> str:
        if not self.chunked:
            return f"full logits ({self.reason})"
        kind = "fused with the frozen lm_head" if self.fused else "checkpointed lm_head chunks"
        return f"chunked over labelled tokens, {self.chunk_tokens} at a time ({kind})"

    def verify(self, model: Any, batch: dict[str, Any]) -> bool:
        """Check on a short probe that lm_head(decoder(x)) is the model's logits; fall back if not."""
        import torch

        if not self.chunked:
            return False
        probe = {k: v[:2, :32] for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                full = model(**probe, use_cache=False).logits.float()
                hidden = self.decoder(**probe, use_cache=False).last_hidden_state
                mine = self.head(hidden).float()
            same = full.shape == mine.shape and torch.allclose(full, mine, rtol=1e-4, atol=1e-4)
        except Exception as exc:  # noqa: BLE001 - any failure means: use the plain path
            same, self.reason = False, f"the decoder/lm_head split failed ({type(exc).__name__})"
        finally:
            model.train(was_training)
        if not same:
            self.reason = self.reason or "the model post-processes its logits"
            self.chunk_tokens = 0
        return same

    def __call__(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """(summed loss over the batch's targets, logits or None) of one forward pass."""
        if not self.chunked:
            return loss_sum(model, batch, self.task, self.pooling)
        out = self.decoder(**model_inputs(batch), use_cache=False)
        hidden = out.last_hidden_state[:, :-1]
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE_INDEX
        selected, targets = hidden[keep], labels[keep]
        if selected.shape[0] == 0:
            return hidden.sum() * 0.0, None
        if self.fused:
            return linear_cross_entropy(selected, self.head, targets, self.chunk_tokens, self.compute_dtype), None
        return chunked_head_loss(selected, self.head, targets, self.chunk_tokens), None


@dataclass
class EvalResult:
    loss: float
    accuracy: float | None
    count: int

    def metrics(self) -> dict[str, float]:
        out = {"eval_loss": self.loss}
        if self.accuracy is not None:
            out["eval_accuracy"] = self.accuracy
        return out


def _correct(logits: Any, batch: dict[str, Any], pooling: str) -> int:
    """Right predictions in a classification batch: per sequence on pooled logits when it pools windows."""
    if "sequence_labels" in batch:
        from studio.sequences.windows import pool_rows

        targets = batch["sequence_labels"]
        pooled = pool_rows(logits.float(), batch["sequence"], targets.shape[0], pooling)
        return int((pooled.argmax(-1) == targets).sum())
    return int((logits.argmax(-1) == batch["labels"]).sum())


def evaluate(
    model: Any, batches: Any, task: str, variant: Any = None, autocast: Any = None, loss_fn: Any = None
) -> EvalResult:
    """Mean loss (and accuracy for classification) over ``batches``; restores train mode afterwards."""
    import torch

    was_training = model.training
    model.eval()
    if variant is not None:
        variant.on_eval_begin(model)
    total, count, correct = 0.0, 0, 0
    try:
        with torch.no_grad():
            for batch in batches:
                with autocast() if autocast else contextlib.nullcontext():
                    value, logits = loss_fn(model, batch) if loss_fn is not None else loss_sum(model, batch, task)
                total += float(value)
                count += target_count(batch, task)
                if task == "classification":
                    correct += _correct(logits, batch, getattr(loss_fn, "pooling", "mean"))
    finally:
        if variant is not None:
            variant.on_eval_end(model)
        model.train(was_training)
    accuracy = correct / count if task == "classification" and count else None
    return EvalResult(loss=total / max(1, count), accuracy=accuracy, count=count)
