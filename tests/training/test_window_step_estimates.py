"""The duration estimate counts a windowed run's steps and validation rows as the loop does.

A long sequence becomes several windows. A per_window run trains on windows (an epoch is every
training window), a pooled one on whole sequences (an epoch is every training sequence); both
score every window of the validation rows they keep (a pooled run keeps whole sequences). Each test runs the real loop on tiny DNA data read by a 3-mer encoder
(window_encoder.py) and compares its steps, validation passes and scored token slots with the
estimate made before submitting.
"""

from __future__ import annotations

import pytest
from conftest_training import cpu_device, write_jsonl
from window_encoder import BATCH, WINDOW, dna_rows, window_request, windows_per_sequence

from studio.training.data import split_indices
from studio.training.duration import DataProfile, MeasuredSpeed, estimate_run_seconds

EPOCH_RUN = dict(max_steps=None, validation_fraction=0.25, eval_every=4)


def run_loop(request, path, encoder_dir, work_dir):
    """The finished real training run of ``request`` on the rows at ``path``."""
    from studio.progress import MemoryReporter
    from studio.training.loop import run_training
    from studio.training.setup import TrainingData

    return run_training(
        request,
        MemoryReporter(),
        settings=None,
        device=cpu_device(),
        work_dir=work_dir,
        dataset=TrainingData(path),
        base_path=encoder_dir,
    )


def estimate_and_run(settings, encoder_dir, tmp_path, window_loss, **hyper):
    """(pre-submit estimate, the real run) of one request on :func:`dna_rows`, and the rows' window counts."""
    from studio.training.duration import estimate_for_request

    rows = dna_rows()
    path = write_jsonl(tmp_path / "dna.jsonl", rows)
    request = window_request(encoder_dir, window_loss, **{**EPOCH_RUN, **hyper})
    estimate = estimate_for_request(request, settings, cpu_device(), path, "classification")
    result = run_loop(request, path, encoder_dir, tmp_path / "run")
    split = split_indices(len(rows), request.hyper.validation_fraction, request.seed)
    windows = windows_per_sequence(rows, encoder_dir)
    return estimate, result, [[windows[i] for i in part] for part in split]


def estimated_eval_tokens(estimate) -> float:
    """The padded token slots the estimate's validation time stands for (its seconds / seconds per token)."""
    m = estimate.measured
    return estimate.eval_s / (m.forward_s / m.step_tokens * m.eval_ratio)


@pytest.mark.parametrize("epochs", [1.0, 2.0])
def test_a_per_window_epoch_run_steps_over_the_training_windows(settings, kmer_encoder_dir, tmp_path, epochs):
    estimate, result, (train_windows, _) = estimate_and_run(
        settings, kmer_encoder_dir, tmp_path, "per_window", epochs=epochs
    )
    # the loop takes ceil(epochs × training windows / batch) steps, far more than the training sequences give
    assert result.total_steps == len(result.losses) == -(-int(epochs * sum(train_windows)) // BATCH)
    assert result.total_steps > -(-int(epochs * len(train_windows)) // BATCH)
    assert estimate.steps == result.total_steps
    assert estimate.eval_passes == result.eval_passes > 1


def test_a_pooled_epoch_run_steps_over_the_training_sequences(settings, kmer_encoder_dir, tmp_path):
    estimate, result, (train_windows, _) = estimate_and_run(settings, kmer_encoder_dir, tmp_path, "pooled_mean")
    assert result.total_steps == len(result.losses) == -(-len(train_windows) // BATCH)  # a step: BATCH sequences
    assert estimate.steps == result.total_steps
    assert estimate.eval_passes == result.eval_passes


@pytest.mark.parametrize("window_loss", ["per_window", "pooled_max"])
@pytest.mark.parametrize("max_eval_rows", [None, 10])
def test_validation_scores_windows(settings, kmer_encoder_dir, tmp_path, window_loss, max_eval_rows):
    """Every validation window is scored (or max_eval_rows of them): not one row per sequence."""
    estimate, result, (_, val_windows) = estimate_and_run(
        settings, kmer_encoder_dir, tmp_path, window_loss, max_eval_rows=max_eval_rows
    )
    if window_loss == "per_window":
        scored = min(sum(val_windows), max_eval_rows or sum(val_windows))
    else:  # max_eval_rows counts whole sequences, each with all its windows: 10 keeps every held-out one
        scored = sum(val_windows)
    assert len(val_windows) < scored  # the held-out sequences alone would undercount
    assert result.eval_tokens == result.eval_passes * scored * WINDOW  # the loop: every window full
    assert estimate.eval_rows == scored
    assert f"of {scored} windows)" in estimate.describe()  # the line shown before submit says what it counts
    assert estimated_eval_tokens(estimate) == pytest.approx(result.eval_tokens, rel=1e-9)


def test_rows_outside_the_sample_count_the_samples_mean():
    """A large dataset is profiled from a sample: sampled rows count exactly, the others at the mean."""
    # rows 0 and 2 sampled: row 0 became 3 windows, row 2 one; row 2 is a single sequence
    data = DataProfile(rows=6, lengths=(8,) * 4, sampled=(0, 2), example_rows=(0, 0, 0, 2))
    assert data.examples_in([0, 2]) == 4
    assert data.examples_in([0, 1, 3]) == 3 + 2 * 2  # two unsampled rows at the sample's 2 windows a row
    pooled = DataProfile(rows=6, lengths=(8,) * 4, units=((0, 1, 2), (3,)), sampled=(0, 2), example_rows=(0, 0, 0, 2))
    assert pooled.step_units_in([0, 1, 3]) == 3  # one sequence a row
    assert pooled.examples_in([0, 1, 3]) == 7  # validation still scores windows
    measured = MeasuredSpeed(step_s=1.0, step_tokens=32, forward_s=0.5, load_s=1.0)
    hand_built = DataProfile(rows=6, lengths=(8,) * 4)  # no sample rows: one example a row
    request = window_request("unused", "per_window", max_steps=None, batch_size=1, validation_fraction=0.5)
    assert estimate_run_seconds(request, hand_built, measured).steps == 3
    train = split_indices(6, 0.5, request.seed)[0]
    assert estimate_run_seconds(request, data, measured).steps == sum({0: 3, 2: 1}.get(i, 2) for i in train)


def test_a_pooled_run_samples_whole_validation_sequences(settings, kmer_encoder_dir, tmp_path):
    """max_eval_rows=2 under a pooled loss: two held-out sequences with every window, never a split one."""
    from itertools import combinations

    estimate, result, (_, val_windows) = estimate_and_run(
        settings, kmer_encoder_dir, tmp_path, "pooled_max", max_eval_rows=2
    )
    scored = result.eval_tokens // (result.eval_passes * WINDOW)
    assert scored in {a + b for a, b in combinations(val_windows, 2)}
    # the estimate cannot know which two: it takes the held-out sequences' mean
    assert estimate.eval_rows == round(sum(val_windows) * 2 / len(val_windows))
