"""The pre-submit estimates of a pooled window loss count whole sequences, as the loop does.

Under ``window_loss`` pooled_mean / pooled_max a micro-batch holds batch_size sequences with all their
windows: the duration estimate's step is that many windows, and the memory check's row is the largest
training sequence's windows × the window length (the loop's :func:`studio.training.memory.pooled_row`).
A per_window run keeps its estimates. The data: random DNA read by a tiny 3-mer encoder whose
34-token windows are what the loop cuts (the request's max_length, 64, is lowered to the encoder's).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from conftest_training import cpu_device, write_jsonl
from window_encoder import BATCH, WINDOW, dna_rows, window_request, windows_per_sequence

from studio.training.data import split_indices
from studio.training.duration import MeasuredSpeed, estimate_run_seconds, padded_batch_tokens
from studio.training.memory import ModelShape, memory_budget, plan_memory

# 0.005 s per padded token of a training step, 0.002 s per token of a validation forward pass
MEASURED = MeasuredSpeed(step_s=2.0, step_tokens=400, forward_s=0.8, load_s=3.0, tokenise_s_per_row=0.001)


def test_a_pooled_step_is_batch_size_whole_sequences_by_hand():
    lengths = [10, 10, 10, 6, 8, 8, 4]  # window lengths
    units = [(0, 1, 2), (3,), (4, 5), (6,)]  # sequences of 3, 1, 2 and 1 windows: 30, 6, 16 and 4 tokens
    # grouped: sorted by tokens, batches of 2 sequences = (3 + 2 windows) × 10 and (1 + 1) × 6
    grouped = padded_batch_tokens(lengths, 2, True, units=units)
    assert grouped == pytest.approx((5 * 10 + 2 * 6) / 2)
    shuffled = padded_batch_tokens(lengths, 2, False, seed=3, units=units)
    assert 2 * 4 <= shuffled <= 5 * 10  # between the smallest and the largest possible batch
    # per row (unchanged): sorted 10 10 | 10 8 | 8 6 (the odd row left out) = 2 rows × their longest
    assert padded_batch_tokens(lengths, 2, True) == pytest.approx(2 * (10 + 10 + 8) / 3)


def test_a_pooled_run_takes_the_windows_per_sequence_times_longer(settings, kmer_encoder_dir, tmp_path):
    from studio.training.duration import estimate_for_request

    rows = dna_rows()
    path = write_jsonl(tmp_path / "dna.jsonl", rows)
    windows = windows_per_sequence(rows, kmer_encoder_dir)
    per_window = estimate_for_request(
        window_request(kmer_encoder_dir, "per_window"), settings, cpu_device(), path, "classification"
    )
    pooled = estimate_for_request(
        window_request(kmer_encoder_dir, "pooled_max"), settings, cpu_device(), path, "classification"
    )
    assert pooled.measured.measured_at == per_window.measured.measured_at  # one measurement (of BATCH windows)
    assert pooled.steps == per_window.steps == 5
    ratio = pooled.train_s / per_window.train_s
    # every batch of BATCH sequences holds their windows, all WINDOW wide: the ratio is the mean windows per
    # sequence (full batches), and can never leave the range of the data's window counts
    assert min(windows) < ratio < max(windows)
    assert ratio == pytest.approx(statistics.fmean(windows), rel=1e-9)
    assert pooled.step_s == pytest.approx(per_window.step_s * statistics.fmean(windows), rel=1e-9)


def test_a_per_window_estimate_is_unchanged(kmer_encoder_dir):
    from studio.training.duration import profile_data
    from studio.training.models import load_tokenizer_for

    rows = dna_rows()
    tokenizer = load_tokenizer_for(kmer_encoder_dir)
    common = dict(task="classification", max_length=WINDOW, loss_on="response", labels=[0, 1], seed=7)
    profile, examples, _ = profile_data(rows, tokenizer, window_loss="per_window", **common)
    assert profile.units is None and len(profile.lengths) == sum(windows_per_sequence(rows, kmer_encoder_dir))
    request = window_request(kmer_encoder_dir, "per_window", grad_accum=2)
    estimate = estimate_run_seconds(request, profile, MEASURED)
    # directly: batch_size windows of WINDOW tokens × grad_accum per step, at the measured seconds per token
    assert estimate.step_s == pytest.approx(BATCH * WINDOW * 2 * MEASURED.step_s / MEASURED.step_tokens)
    pooled, _, _ = profile_data(rows, tokenizer, window_loss="pooled_mean", **common)
    assert [len(u) for u in pooled.units] == windows_per_sequence(rows, kmer_encoder_dir)


def loop_plan(request, settings, path):
    """The memory plan the training loop makes for ``request`` (its own setup and planner)."""
    import torch

    from studio.training.loop import _plan_memory
    from studio.training.precision import choose_precision, precision_cache
    from studio.training.setup import TrainingData, prepare_run

    setup = prepare_run(request, TrainingData(path), Path(request.base_model), torch.device("cpu"), lambda *a: None)
    precision = choose_precision(request.hyper.precision, cpu_device(), cache_file=precision_cache(settings))
    params = sum(p.numel() for p in setup.model.parameters())
    return _plan_memory(request, setup, settings, cpu_device(), precision, 1000, params, None), setup


def test_the_pre_submit_memory_check_plans_the_loops_pooled_row(settings, kmer_encoder_dir, tmp_path):
    from studio.training.memory import estimate_for_request

    rows = dna_rows()
    request = window_request(kmer_encoder_dir, "pooled_mean", validation_fraction=0.25)
    # the longest sequence (the most windows) held out: the loop plans the longest *training* sequence
    held_out = split_indices(len(rows), 0.25, request.seed)[1][0]
    rows[held_out] = {"text": "ACGT" * 150, "label": 0}
    path = write_jsonl(tmp_path / "dna.jsonl", rows)
    windows = windows_per_sequence(rows, kmer_encoder_dir)
    assert windows[held_out] == max(windows)

    before_submit = estimate_for_request(request, settings, cpu_device(), path, "classification")
    loop, setup = loop_plan(request, settings, path)
    assert loop.estimate.seq_len == max(len(u) for u in setup.units) * WINDOW < windows[held_out] * WINDOW
    assert before_submit.estimate.seq_len == loop.estimate.seq_len
    assert before_submit.estimate.activations == loop.estimate.activations
    assert (before_submit.micro_batch_size, before_submit.gradient_checkpointing) == (
        loop.micro_batch_size,
        loop.gradient_checkpointing,
    )


@pytest.mark.parametrize("max_length", [WINDOW, 64])
def test_the_per_window_memory_check_is_unchanged(settings, kmer_encoder_dir, tmp_path, max_length):
    """A row is one window. At the encoder's own window that is what the check always said; asked for
    more (64), the windows are still the encoder's 34 tokens, as the loop cuts them."""
    from studio.training.memory import estimate_for_request

    path = write_jsonl(tmp_path / "dna.jsonl", dna_rows())
    request = window_request(kmer_encoder_dir, "per_window", max_length=max_length)
    before_submit = estimate_for_request(request, settings, cpu_device(), path, "classification")
    direct = plan_memory(
        ModelShape.from_path(kmer_encoder_dir),
        batch_size=BATCH,
        seq_len=WINDOW,  # one window is a row
        budget=memory_budget(settings, cpu_device()),
        checkpointing=request.hyper.gradient_checkpointing,
        refuse=False,
        precision="fp32",
        loss_chunk_tokens=request.hyper.loss_chunk_tokens,
        lora_rank=8,
        task="classification",
        device_type="cpu",
    )
    assert before_submit.as_dict() == direct.as_dict()
    loop, _ = loop_plan(request, settings, path)
    assert before_submit.estimate.seq_len == loop.estimate.seq_len == WINDOW
