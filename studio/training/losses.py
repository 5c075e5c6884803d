"""Loss of one micro-batch and the validation pass.

The loss is computed here from the logits (the model is never given labels), so
causal-LM and classification share one path and gradient accumulation can
normalise by the number of target tokens of the whole optimizer step: the
accumulated gradient then equals that of one big batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from studio.training.tokenise import IGNORE_INDEX


def target_count(batch: dict[str, Any], task: str) -> int:
    """How many targets a micro-batch contributes to the loss (tokens, or rows for classification)."""
    labels = batch["labels"]
    if task == "classification":
        return int(labels.shape[0])
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def loss_sum(model: Any, batch: dict[str, Any], task: str) -> tuple[Any, Any]:
    """(summed cross-entropy over the batch's targets, logits) of one forward pass."""
    import torch.nn.functional as F

    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits.float()
    labels = batch["labels"]
    if task == "classification":
        return F.cross_entropy(logits, labels, reduction="sum"), logits
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1])
    return F.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"), logits


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


def evaluate(model: Any, batches: Any, task: str, variant: Any = None, autocast: Any = None) -> EvalResult:
    """Mean loss (and accuracy for classification) over ``batches``; restores train mode afterwards."""
    import contextlib

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
                    value, logits = loss_sum(model, batch, task)
                total += float(value)
                count += target_count(batch, task)
                if task == "classification":
                    correct += int((logits.argmax(-1) == batch["labels"]).sum())
    finally:
        if variant is not None:
            variant.on_eval_end(model)
        model.train(was_training)
    accuracy = correct / count if task == "classification" and count else None
    return EvalResult(loss=total / max(1, count), accuracy=accuracy, count=count)
