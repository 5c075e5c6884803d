"""The time estimate counts the transfer kit a train job builds after its last step, and says so apart."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
from conftest_training import chat_rows, classification_rows, cpu_device, make_request

from studio.progress import MemoryReporter
from studio.training.duration import FIXED_OVERHEAD_S, DataProfile, MeasuredSpeed, estimate_run_seconds, kit_seconds
from studio.transfer.after_training import keep_transfer_kit, kit_plan

# 0.005 s per padded token of a training step, 0.002 s per token of a forward pass; a timed batch of 4 rows
MEASURED = MeasuredSpeed(step_s=2.0, step_tokens=400, forward_s=0.8, load_s=3.0, tokenise_s_per_row=0.001, step_rows=4)


def test_kit_plan_counts_what_the_kit_will_do(tiny_tokenizer):
    request = make_request("lora")
    plan = kit_plan(request, "causal-lm", chat_rows(12), "/base", tiny_tokenizer)
    # 12 chat rows: 12 real inputs and as many written, one engine wave; the discriminator sees both
    assert (plan.inputs, plan.batch) == (12, 16)
    assert len(plan.discriminator_lengths) == 24 and min(plan.discriminator_lengths) > 0
    assert plan.prompt_tokens > 0 and 16 <= plan.max_new_tokens <= 64
    assert plan.discriminator.hyper.epochs == 3 and plan.discriminator.hyper.validation_fraction == 0
    # no kit: switched off, classification, or no chat rows
    assert kit_plan(request.model_copy(update={"transfer_kit": False}), "causal-lm", chat_rows(12), "/b", None) is None
    assert kit_plan(request, "classification", classification_rows(), "/b", None) is None
    assert kit_plan(request, "causal-lm", [{"text": "plain"}] * 12, "/b", None) is None


def test_estimate_adds_the_kit_at_the_measured_rates_and_says_it_apart(tiny_tokenizer):
    request = make_request("lora", max_steps=3, batch_size=4, validation_fraction=0.0)
    data = DataProfile(rows=12, lengths=(50,) * 12)
    plan = kit_plan(request, "causal-lm", chat_rows(12), "/base", tiny_tokenizer)
    without = estimate_run_seconds(request, data, MEASURED)
    estimate = estimate_run_seconds(request, data, MEASURED, plan)

    disc = estimate_run_seconds(plan.discriminator, DataProfile(24, plan.discriminator_lengths), MEASURED)
    assert disc.steps == 9  # 24 rows, batch 8, 3 epochs
    writing = 3.0 + 12 * plan.prompt_tokens * 0.002 + 1 * plan.max_new_tokens * 0.8 / 4
    scoring = sum(plan.discriminator_lengths) * 0.002
    assert estimate.kit_s == pytest.approx(writing + disc.total_s + scoring)
    assert estimate.total_s == pytest.approx(without.total_s + estimate.kit_s)
    assert estimate.kit_s > without.total_s  # the auditor's tiny job: the kit is most of it

    assert "transfer kit" not in without.describe() + without.breakdown()
    kit = f"{estimate.kit_s:.0f} s"
    # the run, then the kit: the auditor's "about 10 seconds" said where the other minutes would go
    assert estimate.describe().startswith(f"{without.headline()} + ~{kit} for the transfer kit (measured on")
    assert f"transfer kit after the last step {kit}" in estimate.breakdown()
    assert estimate.as_dict()["kit_s"] == estimate.kit_s


def test_kit_time_follows_the_machine_and_its_corrections(tiny_tokenizer):
    plan = kit_plan(make_request("lora"), "causal-lm", chat_rows(12), "/base", tiny_tokenizer)
    slower = replace(MEASURED, step_s=4.0, forward_s=1.6, load_s=6.0)
    # every timed part doubles; the fixed overhead and tokenising the discriminator's 24 rows do not
    fixed = FIXED_OVERHEAD_S + 24 * MEASURED.tokenise_s_per_row
    assert kit_seconds(plan, slower) == pytest.approx(2 * kit_seconds(plan, MEASURED) - fixed)
    corrected = replace(MEASURED, train_ratio=2.0)  # learnt from earlier runs here: the discriminator's steps too
    assert kit_seconds(plan, corrected) > kit_seconds(plan, MEASURED)
    more = kit_plan(make_request("lora"), "causal-lm", chat_rows(40), "/base", tiny_tokenizer)
    assert more.inputs == 40 and kit_seconds(more, MEASURED) > kit_seconds(plan, MEASURED)


def test_the_job_progress_names_the_kit_phase(monkeypatch, tmp_path):
    from studio.transfer import kit as kit_module

    def build(adapter_dir, base_path, rows, *, reporter, **kwargs):
        reporter.progress(2, 9)  # the discriminator's loop, as the job's progress
        raise RuntimeError("stop here")

    monkeypatch.setattr(kit_module, "build_transfer_kit", build)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(12)))
    reporter = MemoryReporter()
    ctx = SimpleNamespace(device=cpu_device(), work_dir=tmp_path, settings=None)
    keep_transfer_kit(make_request("lora"), "causal-lm", data, tmp_path / "a", "/base", reporter, ctx, 4)
    messages = [m for _, _, m in reporter.steps]
    assert messages == [
        "building the transfer kit: writing 12 inputs with the base",
        "building the transfer kit: discriminator step 2/9",
    ]
    assert {(s, t) for s, t, _ in reporter.steps} == {(4, 4)}  # training is done: the bar stays full
