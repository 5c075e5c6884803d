"""The pooled window loss (``window_loss`` pooled_mean / pooled_max / pooled_sum): a sequence's windows share a micro-batch,
their logits are pooled, and the cross-entropy is applied once per sequence (multiple-instance learning)."""

from __future__ import annotations

import math

import pytest
import torch

from studio.schema import TrainingHyperParams
from studio.sequences.windows import pool_logits, pool_rows, pooling_for, saved_pooling
from studio.training.data import BatchPlan, eval_batches
from studio.training.losses import LossFunction, evaluate, loss_sum, target_count
from studio.training.setup import RunSetup, scored_validation, sequence_units

# Three windows of sequence 0 (label 1), two of sequence 1 (label 0); two classes.
LOGITS = [[0.0, 0.0], [1.0, -1.0], [0.0, 3.0], [2.0, 0.0], [1.0, 1.0]]
GROUPS = [0, 0, 0, 1, 1]
TARGETS = [1, 0]


class Fixed(torch.nn.Module):
    """A 'model' whose logits for row i are a trainable copy of ``table[input_ids[i, 0]]`` (LOGITS by default)."""

    def __init__(self, table=LOGITS):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table))

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.table[input_ids[:, 0]]})()


def pooled_batch():
    return {
        "input_ids": torch.arange(5).unsqueeze(-1),
        "attention_mask": torch.ones(5, 1, dtype=torch.long),
        "labels": torch.tensor([1, 1, 1, 0, 0]),
        "sequence": torch.tensor(GROUPS),
        "sequence_labels": torch.tensor(TARGETS),
    }


def by_hand(how: str, logits=LOGITS, groups=GROUPS, targets=TARGETS) -> float:
    """Σ over sequences of −log softmax(pooled)[target], pooled per class by mean or log Σ exp."""
    total = 0.0
    for group, target in enumerate(targets):
        rows = [logits[i] for i, g in enumerate(groups) if g == group]
        if how == "mean":
            pooled = [sum(r[c] for r in rows) / len(rows) for c in range(2)]
        elif how == "sum":
            pooled = [sum(r[c] for r in rows) for c in range(2)]
        else:
            pooled = [math.log(sum(math.exp(r[c]) for r in rows)) for c in range(2)]
        total += math.log(sum(math.exp(p) for p in pooled)) - pooled[target]
    return total


@pytest.mark.parametrize("how", ["mean", "max", "sum"])
def test_pooled_loss_equals_a_hand_computation(how):
    value, logits = loss_sum(Fixed(), pooled_batch(), "classification", how)
    assert float(value.detach()) == pytest.approx(by_hand(how), rel=1e-6)
    assert logits.shape == (5, 2)  # still one row per window (window accuracy)
    assert target_count(pooled_batch(), "classification") == 2  # one target per sequence


@pytest.mark.parametrize("how", ["mean", "max", "sum"])
def test_gradients_reach_every_window_of_a_sequence(how):
    model = Fixed()
    value, _ = loss_sum(model, pooled_batch(), "classification", how)
    value.backward()
    per_window = model.table.grad.abs().sum(-1)
    assert bool((per_window > 0).all()), per_window  # a hard max would leave all but one window at 0


def test_max_pooling_lets_one_window_decide():
    # One confident window among background ones: the smooth max follows it, the mean dilutes it.
    logits = torch.tensor([[1.0, 0.0]] * 7 + [[0.0, 6.0]])
    _, mean = pool_logits(logits, [0] * 8, "mean")
    _, top = pool_logits(logits, [0] * 8, "max")
    assert int(mean.argmax()) == 0 and int(top.argmax()) == 1
    assert top[0, 1] == pytest.approx(math.log(7 + math.exp(6)))  # ≈ the largest logit of class 1
    with pytest.raises(ValueError, match="pooling must be one of"):
        pool_rows(logits, torch.zeros(8, dtype=torch.long), 1, "median")


def test_windows_of_a_sequence_share_a_micro_batch_and_batch_size_counts_sequences():
    # 4 sequences with 3, 1, 2 and 1 windows (examples as tokenise writes them, weights included).
    sizes = [3, 1, 2, 1]
    train = [
        {"input_ids": [5, 6 + w, 7], "labels": s % 2, "sequence": s, "weight": 1.0}
        for s, n in enumerate(sizes)
        for w in range(n)
    ]
    units = sequence_units(train)
    assert units == [[0, 1, 2], [3], [4, 5], [6]]
    setup = RunSetup(
        task="classification",
        tokenizer=None,
        model=None,
        labels=[0, 1],
        train=train,
        val=[],
        plan=BatchPlan(len(units), 2, 1, seed=0, lengths=[3 * len(u) for u in units]),
        total_steps=4,
        warmup_steps=0,
        pad_id=0,
        truncated=0,
        dropped=0,
        units=units,
    )
    for step in range(1, 5):
        [(batch, counts)] = setup.counted_step_batches(step, "cpu")
        sequences = setup.plan.step_batches(step)[0]
        assert counts.targets == 2 and batch["sequence_labels"].tolist() == [s % 2 for s in sequences]
        assert batch["sequence"].tolist() == [j for j, s in enumerate(sequences) for _ in range(sizes[s])]
        assert batch["input_ids"].shape[0] == sum(sizes[s] for s in sequences)  # every window of each
        assert "weight" not in batch
    assert sequence_units([{"input_ids": [1], "labels": 0}]) is None  # not windowed: per example


def test_sum_pooling_adds_evidence_up_where_the_smooth_max_saturates():
    # Two sequences with one and with six equally coding windows (class 1 +2 each) among neutral ones:
    # the sum grows by the same margin with every coding window, the smooth max by ever less (log of a count).
    one = torch.tensor([[0.0, 2.0]] + [[0.0, 0.0]] * 5)
    six = torch.tensor([[0.0, 2.0]] * 6)
    margins = {}
    for how in ("sum", "max"):
        _, pooled = pool_logits(torch.cat([one, six]), [0] * 6 + [1] * 6, how)
        margins[how] = (pooled[:, 1] - pooled[:, 0]).tolist()
    assert margins["sum"] == pytest.approx([2.0, 12.0])
    # five more coding windows: +10 for the sum, less than one window's margin (2) for the smooth max
    assert margins["max"][1] - margins["max"][0] < 2.0


def test_the_setting_defaults_to_todays_loss_and_evaluation_pools_as_trained(tmp_path):
    assert TrainingHyperParams().window_loss == "per_window"
    assert [pooling_for(v) for v in ("per_window", "pooled_mean", "pooled_max", "pooled_sum")] == [
        "mean",
        "mean",
        "max",
        "sum",
    ]
    assert saved_pooling(tmp_path) == "mean"  # no reproducibility.json: today's mean
    (tmp_path / "reproducibility.json").write_text('{"request": {"hyper": {"window_loss": "pooled_max"}}}')
    assert saved_pooling(tmp_path) == "max"


# Validation of a pooled run scores what training optimises: before, the validation pass scored every
# window on its own, so a coding-potential classifier pooling with a smooth max reported 0.43 validation
# accuracy while it classified 0.92 of the test sequences right (most windows of an mRNA hold no reading
# frame, and the model rightly does not call them coding). Now validation batches hold whole sequences.

# Sequence 0 (label 1): two background windows and one strongly class-1 window; sequence 1 (label 0).
VAL_LOGITS = [[1.0, 0.0], [1.0, -1.0], [0.0, 2.5], [2.0, 0.0], [0.5, 1.0]]
VAL_GROUPS = [0, 0, 0, 1, 1]
VAL_TARGETS = [1, 0]


def val_examples():
    """The windows as tokenise writes them: each carries its sequence's label and index."""
    return [
        {"input_ids": [i], "labels": VAL_TARGETS[g], "sequence": g, "weight": 1.0} for i, g in enumerate(VAL_GROUPS)
    ]


@pytest.mark.parametrize("how", ["mean", "max"])
def test_pooled_validation_scores_one_prediction_per_sequence(how):
    batches = list(eval_batches(val_examples(), 8, pad_id=0, pooled=True))
    result = evaluate(Fixed(VAL_LOGITS), batches, "classification", loss_fn=LossFunction("classification", pooling=how))
    assert result.count == 2  # sequences, not windows
    assert result.loss == pytest.approx(by_hand(how, VAL_LOGITS, VAL_GROUPS, VAL_TARGETS) / 2, rel=1e-6)
    # smooth max: the one coding window decides sequence 0; per window only 2 of 5 windows are right
    assert result.accuracy == (1.0 if how == "max" else 0.5)
    per_window = evaluate(Fixed(VAL_LOGITS), list(eval_batches(val_examples(), 8, pad_id=0)), "classification")
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
