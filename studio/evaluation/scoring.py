"""The two passes of an evaluation: teacher-forced loss (+ class predictions) and generation.

The loss pass reuses training's tokenisation, collation and loss (``encode_rows``,
``eval_batches``, ``loss_sum``, ``target_count``), so ``eval_loss`` here means what
``eval_loss`` means during training: mean cross-entropy per response token for chat
rows (per token for text rows, per row for classification).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from studio.evaluation.examples import GenerationExample
from studio.evaluation.generate import Answer

Tick = Callable[[str], None]  # called with the phase after every batch: progress, raises JobCancelled


@dataclass
class LossResult:
    """Summed loss over the targets of every batch, and class predictions for classifiers."""

    loss_sum: float = 0.0
    targets: int = 0
    predicted: list[int] = field(default_factory=list)
    expected: list[int] = field(default_factory=list)
    logits: list[list[float]] = field(default_factory=list)  # classifiers: one row per example
    sequences: list[int] = field(default_factory=list)  # windowed sequences: the row each window came from

    def per_sequence(self, pooling: str = "mean") -> tuple[list[list[float]], list[int]] | None:
        """(logits, expected) per sequence, the windows' logits pooled (mean or max); None unless windowed."""
        from studio.sequences.windows import pool_logits

        if not self.sequences or len(self.sequences) != len(self.logits):
            return None
        order, pooled = pool_logits(self.logits, self.sequences, pooling)
        label_of = dict(zip(self.sequences, self.expected, strict=True))
        return pooled.tolist(), [label_of[s] for s in order]

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.targets if self.targets else float("nan")


def batch_count(n: int, batch_size: int) -> int:
    """How many batches ``n`` items make."""
    return (n + batch_size - 1) // batch_size


def loss_pass(
    model: Any,
    examples: Sequence[dict[str, Any]],
    *,
    task: str,
    pad_id: int,
    batch_size: int,
    device: Any,
    tick: Tick,
) -> LossResult:
    """Mean loss over ``examples`` (encoded by ``encode_rows``) in stored order; argmax for classifiers."""
    import torch

    from studio.training.data import eval_batches, to_device
    from studio.training.losses import loss_sum, target_count

    result = LossResult()
    with torch.inference_mode():
        for batch in eval_batches(examples, batch_size, pad_id):
            batch = to_device(batch, device)
            value, logits = loss_sum(model, batch, task)
            result.loss_sum += float(value)
            result.targets += target_count(batch, task)
            if task == "classification":
                result.predicted += logits.argmax(-1).tolist()
                result.expected += batch["labels"].tolist()
                result.logits += logits.float().tolist()
            tick("scoring loss")
    if task == "classification" and examples and "sequence" in examples[0]:
        result.sequences = [int(e["sequence"]) for e in examples]
    return result


def generation_pass(
    model: Any,
    tokenizer: Any,
    examples: Sequence[GenerationExample],
    *,
    batch_size: int,
    max_new_tokens: int,
    max_prompt_tokens: int,
    device: Any,
    tick: Tick,
) -> list[Answer]:
    """Greedy predictions for every example, batch by batch, each marked when the budget cut it off."""
    from studio.evaluation.generate import generate_batch, stop_ids

    stop = stop_ids(tokenizer)
    predictions: list[Answer] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        predictions += generate_batch(
            model,
            tokenizer,
            [e.prompt for e in chunk],
            max_new_tokens=max_new_tokens,
            max_prompt_tokens=max_prompt_tokens,
            device=device,
            stop=stop,
        )
        tick("generating answers")
    return predictions
