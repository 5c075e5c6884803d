"""Validation of a run trained with a pooled window loss scores what training optimises: sequences.

Before, the validation pass scored every window on its own (the sequence's label on each window),
so a coding-potential classifier that pools with a smooth max reported a validation accuracy of
0.43 while it classified 0.92 of the test sequences right: most windows of an mRNA hold no reading
frame, and the model rightly does not call them coding. Now validation batches hold whole
sequences, the loss pools as training pools and the accuracy is one prediction per sequence.
"""

from __future__ import annotations

import math

import pytest
import torch

from studio.training.data import eval_batches
from studio.training.losses import LossFunction, evaluate
from studio.training.setup import scored_validation

# Sequence 0 (label 1): two background windows and one strongly class-1 window; sequence 1 (label 0).
LOGITS = [[1.0, 0.0], [1.0, -1.0], [0.0, 2.5], [2.0, 0.0], [0.5, 1.0]]
GROUPS = [0, 0, 0, 1, 1]
TARGETS = [1, 0]


class Fixed(torch.nn.Module):
    """A 'model' whose logits for row i are LOGITS[input_ids[i, 0]]."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(LOGITS))

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.table[input_ids[:, 0]]})()


def examples():
    """The windows as tokenise writes them: each carries its sequence's label and index."""
    return [{"input_ids": [i], "labels": TARGETS[g], "sequence": g, "weight": 1.0} for i, g in enumerate(GROUPS)]


def pooled_loss_by_hand(how: str) -> float:
    total = 0.0
    for group, target in enumerate(TARGETS):
        rows = [LOGITS[i] for i, g in enumerate(GROUPS) if g == group]
        if how == "mean":
            pooled = [sum(r[c] for r in rows) / len(rows) for c in range(2)]
        else:
            pooled = [math.log(sum(math.exp(r[c]) for r in rows)) for c in range(2)]
        total += math.log(sum(math.exp(p) for p in pooled)) - pooled[target]
    return total / len(TARGETS)


@pytest.mark.parametrize("how", ["mean", "max"])
def test_pooled_validation_scores_one_prediction_per_sequence(how):
    batches = list(eval_batches(examples(), 8, pad_id=0, pooled=True))
    result = evaluate(Fixed(), batches, "classification", loss_fn=LossFunction("classification", pooling=how))
    assert result.count == 2  # sequences, not windows
    assert result.loss == pytest.approx(pooled_loss_by_hand(how), rel=1e-6)
    # smooth max: the one coding window decides sequence 0; per window only 2 of 5 windows are right
    assert result.accuracy == (1.0 if how == "max" else 0.5)
    per_window = evaluate(Fixed(), list(eval_batches(examples(), 8, pad_id=0)), "classification")
    assert per_window.count == 5 and per_window.accuracy == pytest.approx(2 / 5)


def test_pooled_batches_never_split_a_sequence_and_count_sequences():
    windows = [
        {"input_ids": [7] * (1 + w), "labels": s % 2, "sequence": s} for s, n in enumerate([3, 1, 2]) for w in range(n)
    ]
    batches = list(eval_batches(windows, 2, pad_id=0, pooled=True))
    assert [b["sequence_labels"].tolist() for b in batches] == [[0, 1], [0]]
    assert [b["sequence"].tolist() for b in batches] == [[0, 0, 0, 1], [0, 0]]
    assert all("weight" not in b for b in batches)


def test_a_sampled_pooled_validation_keeps_whole_sequences():
    windows = [{"input_ids": [s], "labels": 0, "sequence": s} for s, n in enumerate([3, 1, 2, 4, 1]) for _ in range(n)]
    kept = scored_validation(windows, 2, seed=0, pooled=True)
    by_sequence = {s: sum(1 for w in kept if w["sequence"] == s) for s in {w["sequence"] for w in kept}}
    assert len(by_sequence) == 2
    assert all(count == [3, 1, 2, 4, 1][s] for s, count in by_sequence.items())
    assert scored_validation(windows, 2, seed=0, pooled=True) == kept  # the same rows every pass
    assert len(scored_validation(windows, 2, seed=0)) == 2  # per window: two windows
