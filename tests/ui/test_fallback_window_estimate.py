"""The Train tab's rough fallback estimate counts a sequence encoder's windows, as the measured estimate does.

When a GPU worker is online and this machine has none, or measuring fails, the Train tab guesses from a
typical throughput. On a sequence encoder pre-trained by the studio a long sequence is read as
overlapping windows: a per_window run steps over the training windows, a pooled one over training
sequences with all their windows in each step. The fallback must count the same steps as the measured
estimate, and process a window's tokens per example (all of a sequence's windows when pooled). A text
dataset on a causal LM keeps its row count.
"""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest

from app import tab_train
from app.train_presets import estimate_seconds, total_steps
from studio.datasets.splits import split_rows
from studio.training.data import epoch_steps
from ui.train_tab_handlers import LNCRNA, add_lncrna_sample

WINDOW = 34  # the encoder's positions: [CLS] + 32 codons + [SEP]; every sample sequence is longer
OVERLAP = 8
ROWS = 12  # a multiple of BATCH: every batch of whole sequences in the estimate is full
BATCH = 4
ENCODER = "codon-enc"
HYPER = {
    "max_steps": None,
    "epochs": 1.0,
    "batch_size": BATCH,
    "grad_accum": 1,
    "max_length": 128,  # lowered to the encoder's window, as the loop does
    "validation_fraction": 0.25,
    "eval_every": 1000,
    "precision": "fp32",
}


@pytest.fixture
def codon_encoder(services):
    """A tiny codon encoder saved and registered as the pre-train job leaves one (window_overlap recorded)."""
    from studio.models.base_models import pretrained_model_path, register_pretrained_model
    from studio.sequences.pretrain import build_encoder
    from studio.sequences.tokenizers import build_tokenizer

    tokenizer = build_tokenizer("codon", model_max_length=WINDOW)
    tokenizer.init_kwargs["window_overlap"] = OVERLAP
    out = pretrained_model_path(services.settings, ENCODER)
    build_encoder(tokenizer, 16, 1, 2, WINDOW, seed=0, pooling="mean").save_pretrained(out)
    tokenizer.save_pretrained(out)
    register_pretrained_model(services.registry, ENCODER, out, "tiny codon encoder (test)")
    return out


@pytest.fixture
def lncrna(services, tmp_path):
    dataset = add_lncrna_sample(services, tmp_path, rows=ROWS)
    assert dataset.rows == ROWS and dataset.report.get("task") == "classification"
    return dataset


def windows_per_sequence(encoder_dir) -> list[int]:
    """Windows of each sample row, cut directly at the encoder's window (three reading frames each)."""
    import json

    from studio.sequences.windows import encode_windows
    from studio.training.models import load_tokenizer_for

    tokenizer = load_tokenizer_for(encoder_dir)
    rows = [json.loads(line) for line in LNCRNA.read_text().splitlines()[:ROWS]]
    windows = [encode_windows(tokenizer, row["sequence"], WINDOW) for row in rows]
    assert {len(w) for ws in windows for w in ws} == {WINDOW}  # every window full: no padding differences
    return [len(ws) for ws in windows]


def measured_then_fallback(services, dataset, monkeypatch, hyper, how):
    """(the measured estimate on this CPU, the Train tab's line when it cannot measure, the fallback's guess)."""
    request = tab_train._estimate_request(dataset, ENCODER, hyper)
    measured = tab_train.estimate_for_request(
        request, services.settings, tab_train.detect_device("cpu"), dataset.stored_path, "classification"
    )
    if how == "gpu worker":  # a CUDA worker online, seen from this CPU machine: nothing is measured here
        worker = SimpleNamespace(device="cuda:0")
        monkeypatch.setattr(tab_train, "online_workers", lambda *_: [worker])

        def not_called(*_a, **_k):
            raise AssertionError("a remote GPU is never measured on this machine")

        monkeypatch.setattr(tab_train, "estimate_for_request", not_called)
        kind = "cuda"
    else:  # measuring fails on this machine

        def fails(*_a, **_k):
            raise ValueError("measuring failed")

        monkeypatch.setattr(tab_train, "estimate_for_request", fails)
        kind = "cpu"
    text = tab_train.estimate_markdown(services, dataset.id, ENCODER, hyper)
    assert "Rough estimate" in text and "measured on this machine" not in text
    rough = tab_train.rough_estimate(services, dataset, ENCODER, hyper, kind)
    return measured, text, rough, request, kind


def test_per_window_fallback_steps_over_the_training_windows(services, codon_encoder, lncrna, monkeypatch):
    hyper = {**HYPER, "window_loss": "per_window"}
    measured, text, rough, request, kind = measured_then_fallback(services, lncrna, monkeypatch, hyper, "gpu worker")
    windows = windows_per_sequence(codon_encoder)
    train, _ = split_rows(ROWS, HYPER["validation_fraction"], request.seed)
    by_hand = epoch_steps(sum(windows[i] for i in train), 1.0, BATCH)
    assert rough.steps == measured.steps == by_hand
    assert by_hand > 2 * total_steps(ROWS, hyper)  # counting rows would be far too few steps
    assert f"**{rough.steps} steps**" in text and "(CUDA)" in text
    assert f"~{sum(windows)} windows of up to {WINDOW} tokens" in text and f"a step {BATCH} windows" in text
    assert rough.tokens_per_example == pytest.approx(WINDOW)  # one full window per example
    assert rough.seconds == pytest.approx(estimate_seconds(ROWS, hyper, kind, steps=by_hand, tokens_per_example=WINDOW))


def test_pooled_fallback_steps_over_sequences_with_all_their_windows(services, codon_encoder, lncrna, monkeypatch):
    hyper = {**HYPER, "window_loss": "pooled_max"}
    measured, text, rough, request, kind = measured_then_fallback(services, lncrna, monkeypatch, hyper, "fails")
    windows = windows_per_sequence(codon_encoder)
    train, _ = split_rows(ROWS, HYPER["validation_fraction"], request.seed)
    assert rough.steps == measured.steps == epoch_steps(len(train), 1.0, BATCH)  # a step: BATCH sequences
    assert f"**{rough.steps} steps**" in text and "could not measure on this machine: measuring failed" in text
    assert "whole sequences with all their windows" in text and f"~{sum(windows)} windows" in text
    # a sequence's tokens: its windows × the window length (every batch full: the mean over the sequences)
    per_sequence = statistics.fmean(windows) * WINDOW
    assert rough.tokens_per_example == pytest.approx(per_sequence, rel=1e-9)
    assert rough.tokens_per_example > 10 * WINDOW
    assert rough.seconds == pytest.approx(
        estimate_seconds(ROWS, hyper, kind, steps=rough.steps, tokens_per_example=per_sequence)
    )


def test_a_text_dataset_keeps_its_row_count(services, tmp_path, monkeypatch):
    import json

    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"say {i}", "output": f"{i}"}) + "\n" for i in range(6)))
    dataset = services.datasets.add(path)
    assert dataset.report.get("task", "causal-lm") == "causal-lm"
    hyper = {"max_steps": None, "epochs": 2.0, "batch_size": 2, "validation_fraction": 0.0, "max_length": 64}
    monkeypatch.setattr(tab_train, "online_workers", lambda *_: [SimpleNamespace(device="cuda:0")])
    text = tab_train.estimate_markdown(services, dataset.id, "smollm2-135m-instruct", hyper)
    steps = total_steps(dataset.rows, hyper)
    assert f"**{steps} steps**" in text and "windows" not in text and "Rough estimate" in text
    rough = tab_train.rough_estimate(services, dataset, "smollm2-135m-instruct", hyper, "cuda")
    assert rough == tab_train.RoughEstimate(steps, estimate_seconds(dataset.rows, hyper, "cuda"))
