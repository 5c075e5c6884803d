"""Time estimates: the pure arithmetic with known timings, the cache, the learning from runs, and real runs."""

from __future__ import annotations

import json

import pytest
from conftest_training import chat_rows, cpu_device, make_request, register_chat_dataset, write_jsonl

from studio.training.duration import (
    MEASUREMENT_TTL_S,
    ActualTimes,
    DataProfile,
    MeasuredSpeed,
    cached_measurement,
    corrections,
    estimate_run_seconds,
    padded_batch_tokens,
    record_run,
    validation_passes,
)

# 0.005 s per padded token of a training step, 0.002 s per token of a validation forward pass
MEASURED = MeasuredSpeed(step_s=2.0, step_tokens=400, forward_s=0.8, load_s=3.0, tokenise_s_per_row=0.001)


def request_with(**hyper):
    return make_request("lora", **hyper)


def test_estimate_adds_steps_validation_passes_and_setup_from_the_measurement():
    data = DataProfile(rows=1000, lengths=(100,) * 64)  # every batch of 4 rows: 400 padded tokens
    request = request_with(max_steps=20, batch_size=4, eval_every=10, validation_fraction=0.05, max_eval_rows=32)
    estimate = estimate_run_seconds(request, data, MEASURED)
    assert (estimate.steps, estimate.eval_passes, estimate.eval_rows) == (20, 2, 32)  # 50 held out, 32 scored
    assert estimate.step_s == pytest.approx(400 * 0.005)
    assert estimate.train_s == pytest.approx(20 * 400 * 0.005)
    assert estimate.eval_s == pytest.approx(2 * 32 * 100 * 0.002)
    assert estimate.setup_s == pytest.approx(1000 * 0.001 + 2 * 3.0 + 5.0)
    assert estimate.total_s == pytest.approx(estimate.train_s + estimate.eval_s + estimate.setup_s)
    text = estimate.describe()
    assert text.startswith("about ") and "measured on this machine: 2.0 s per step, 2 validation passes of 32 rows" in text


def test_validation_over_all_held_out_rows_costs_what_the_old_quick_preset_cost():
    # the run: 30 steps, 3 passes over 100 held-out rows of 2000: validation dominates at this speed
    data = DataProfile(rows=2000, lengths=(100,) * 64)
    request = request_with(max_steps=30, batch_size=4, eval_every=10, validation_fraction=0.05)
    estimate = estimate_run_seconds(request, data, MEASURED)
    assert (estimate.eval_passes, estimate.eval_rows) == (3, 100)
    assert estimate.eval_s == pytest.approx(3 * 100 * 100 * 0.002)


def test_corrections_from_earlier_runs_scale_their_own_part():
    data = DataProfile(rows=100, lengths=(50,) * 16)
    request = request_with(max_steps=8, batch_size=4, eval_every=4)
    plain = estimate_run_seconds(request, data, MEASURED)
    from dataclasses import replace

    corrected = estimate_run_seconds(request, data, replace(MEASURED, train_ratio=1.5, eval_ratio=0.5))
    assert corrected.train_s == pytest.approx(1.5 * plain.train_s)
    assert corrected.eval_s == pytest.approx(0.5 * plain.eval_s)
    assert corrected.setup_s == pytest.approx(plain.setup_s)


def test_epochs_and_longer_steps_scale_the_estimate():
    data = DataProfile(rows=101, lengths=(50,) * 16)
    one = estimate_run_seconds(
        request_with(max_steps=None, batch_size=4, validation_fraction=0.0, epochs=1.0), data, MEASURED
    )
    assert one.steps == 26 and one.eval_passes == 0 and one.eval_s == 0  # 101 rows, none held out
    two = estimate_run_seconds(
        request_with(max_steps=None, batch_size=4, validation_fraction=0.0, epochs=2.0), data, MEASURED
    )
    assert two.steps == 51 and two.train_s == pytest.approx(51 / 26 * one.train_s)
    accum = estimate_run_seconds(
        request_with(batch_size=4, grad_accum=2, validation_fraction=0.0, max_steps=10), data, MEASURED
    )
    assert accum.step_s == pytest.approx(2 * 4 * 50 * 0.005)


def test_validation_passes_match_the_loop_rule():
    assert validation_passes(30, 10, True) == 3  # at 10, 20, and the final pass at 30
    assert validation_passes(20, 10, True) == 2
    assert validation_passes(21, 10, True) == 3
    assert validation_passes(5, 50, True) == 1
    assert validation_passes(30, 10, False) == 0


def test_padded_tokens_of_grouped_and_shuffled_batches():
    lengths = [10, 10, 50, 50]
    assert padded_batch_tokens(lengths, 2, grouped=True) == pytest.approx(2 * (50 + 10) / 2)
    mixed = [10, 50] * 32
    assert padded_batch_tokens(mixed, 2, grouped=False) > padded_batch_tokens(mixed, 2, grouped=True)


def test_a_measurement_is_reused_while_fresh_and_taken_again_when_stale(tmp_path):
    cache = tmp_path / "speed.json"
    calls = []

    def measure():
        calls.append(1)
        return MeasuredSpeed(step_s=float(len(calls)), step_tokens=100, forward_s=0.1, load_s=1.0, measured_at=1000.0)

    first, fresh = cached_measurement(cache, "k", measure, now=1000.0)
    assert fresh and first.step_s == 1.0
    again, fresh = cached_measurement(cache, "k", measure, now=1000.0 + MEASUREMENT_TTL_S / 2)
    assert not fresh and again == first
    later, fresh = cached_measurement(cache, "k", measure, now=1000.0 + MEASUREMENT_TTL_S + 1)
    assert fresh and later.step_s == 2.0
    assert json.loads(cache.read_text())["k"]["step_s"] == 2.0


def test_runs_teach_the_median_ratio_per_machine(tmp_path):
    runs = tmp_path / "runs.json"
    assert corrections(runs, "m") == {"runs_learnt": 0, "train_ratio": 1.0, "eval_ratio": 1.0, "setup_ratio": 1.0}
    for slowdown in (1.2, 2.0, 1.5):
        actual = ActualTimes(
            setup_s=10.0,
            train_s=slowdown * 1000 * 0.005,  # 1000 tokens trained
            eval_s=200 * 0.002,  # as measured
            save_s=1.0,
            steps=10,
            train_tokens=1000,
            eval_tokens=200,
            eval_passes=1,
            rows=1000,
        )
        ratios = record_run(runs, "m", actual, MEASURED)
        assert ratios["train"] == pytest.approx(slowdown)
    learnt = corrections(runs, "m")
    assert learnt["runs_learnt"] == 3
    assert learnt["train_ratio"] == pytest.approx(1.5) and learnt["eval_ratio"] == pytest.approx(1.0)
    assert learnt["setup_ratio"] == pytest.approx(11.0 / (1000 * 0.001 + 2 * 3.0 + 5.0))
    assert corrections(runs, "another machine")["runs_learnt"] == 0


def test_the_loop_runs_as_many_validation_passes_as_estimated_over_the_capped_rows(train_tiny):
    result = train_tiny("lora", max_steps=5, eval_every=2, validation_fraction=0.5, max_eval_rows=2, batch_size=2)
    assert result.eval_passes == validation_passes(5, 2, True) == 3
    assert result.eval_seconds > 0 and result.setup_seconds > 0 and result.train_seconds > 0
    # 6 rows held out, 2 scored per pass: one batch of 2 rows each time
    assert result.eval_tokens <= 3 * 2 * 64


def test_estimate_for_request_measures_once_and_jobs_record_their_time_split(registry, settings, tiny_llama_dir, tmp_path):
    from studio.jobs.context import JobContext
    from studio.progress import RegistryReporter
    from studio.training.duration import estimate_for_request, measurement_cache, runs_cache
    from studio.training.job import run_train_job

    path = write_jsonl(tmp_path / "chat.jsonl", chat_rows(12))
    row = register_chat_dataset(registry, path)
    request = make_request("lora", max_steps=3, eval_every=2, validation_fraction=0.25, batch_size=2)
    request = request.model_copy(update={"base_model": str(tiny_llama_dir), "dataset_id": row.id})
    estimate = estimate_for_request(request, settings, cpu_device(), path, "causal-lm")
    assert estimate.steps == 3 and estimate.eval_passes == 2 and estimate.eval_rows == 3
    assert estimate.measured.step_s > 0 and estimate.measured.forward_s > 0 and estimate.measured.runs_learnt == 0
    again = estimate_for_request(request, settings, cpu_device(), path, "causal-lm")
    assert again.measured.measured_at == estimate.measured.measured_at  # kept, not measured again
    assert len(json.loads(measurement_cache(settings).read_text())) == 1

    job = registry.create_job(kind="train", request=request.model_dump(mode="json"), schema_version=1)
    ctx = JobContext(job.id, settings, registry, cpu_device(), attempt=1)
    summary = run_train_job(request, RegistryReporter(registry, job.id, min_interval=0.0), ctx)
    timings = summary["timings"]
    assert timings["steps"] == 3 and timings["eval_passes"] == 2 and timings["train_tokens"] > 0
    assert timings["total_s"] == pytest.approx(
        timings["setup_s"] + timings["train_s"] + timings["eval_s"] + timings["save_s"]
    )
    assert set(timings["ratios_to_measurement"]) == {"train", "eval", "setup"}
    assert json.loads(runs_cache(settings).read_text())  # kept for the next estimate
    learnt = estimate_for_request(request, settings, cpu_device(), path, "causal-lm")
    assert learnt.measured.runs_learnt == 1
    assert learnt.measured.train_ratio == pytest.approx(timings["ratios_to_measurement"]["train"])
