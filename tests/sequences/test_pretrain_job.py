"""The pretrain job end to end through the handlers (no broker): MLM loss falls, a base model is
registered, and a LoRA classification job trains on it with windows; refusals are clear."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from studio.errors import ValidationFailed
from studio.jobs.handlers import get_handler
from studio.progress import MemoryReporter
from studio.schema import PretrainRequest, TrainingHyperParams, TrainRequest, parse_request

LNCRNA = Path(__file__).resolve().parents[2] / "data" / "samples" / "lncrna_athaliana" / "train.jsonl"


def lncrna_subset(tmp_path, n):
    """The first ``n`` rows of the in-repo lncRNA sample (balanced: rows alternate classes)."""
    rows = [json.loads(line) for line in LNCRNA.read_text().splitlines()[:n]]
    path = tmp_path / "lnc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_pretrain(dataset_id, **overrides):
    values = dict(
        dataset_id=dataset_id,
        name="lnc-encoder",
        size="tiny",
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        max_length=64,
        window_overlap=8,
        max_steps=30,
        batch_size=16,
        learning_rate=3e-3,
        warmup_ratio=0.0,
        validation_fraction=0.1,
        log_every=5,
        eval_every=1000,
        save_every=1000,
        seed=0,
    )
    values.update(overrides)
    return PretrainRequest(**values)


@pytest.mark.slow
def test_pretrain_then_lora_classification_on_the_new_base(studio, tmp_path):
    dataset = studio.datasets.add(lncrna_subset(tmp_path, 40), mapping={"text": "sequence", "label": "label"})
    request = parse_request(tiny_pretrain(dataset.id).model_dump(mode="json"))  # as a worker reads it
    reporter = MemoryReporter()
    result = get_handler("pretrain")(request, reporter, studio.ctx(request))

    # MLM loss falls: on held-out windows under fixed masks, and in training
    assert result["eval_loss"] < result["first_eval_loss"] - 0.05
    train_losses = [v for _, v in reporter.series("loss")]
    assert train_losses[-1] < train_losses[0]
    assert result["tokenizer"] == {"kind": "kmer", "k": 3}  # the import's proposal for DNA
    assert result["sequence_column"] == "sequence"
    assert any("time estimate: about" in message for _, message in reporter.logs)
    assert reporter.steps[-1][:2] == (30, 30)

    # registered as a base model, resolvable by name like a bundled one
    rows = {m.name: m for m in studio.registry.list_base_models()}
    assert rows["lnc-encoder"].task == "encoder" and rows["lnc-encoder"].source == "pretrained"
    from studio.models.base_models import resolve_base_model

    resolved = resolve_base_model("lnc-encoder", studio.settings)
    assert resolved.path == Path(result["base_model_path"]) and (resolved.path / "tokenizer.json").exists()
    assert resolved.task == "encoder"
    with pytest.raises(ValidationFailed, match="exists"):
        again = tiny_pretrain(dataset.id, max_steps=1)
        get_handler("pretrain")(again, MemoryReporter(), studio.ctx(again))

    # a LoRA classification job on it: windows, LoRA on attention + feed-forward, the head trained
    train = TrainRequest(
        dataset_id=dataset.id,
        base_model="lnc-encoder",
        task="classification",
        variant="lora",
        hyper=TrainingHyperParams(
            max_steps=3, batch_size=8, learning_rate=1e-3, validation_fraction=0.1, eval_every=1000, log_every=1
        ),
    )
    treporter = MemoryReporter()
    summary = get_handler("train")(train, treporter, studio.ctx(train))
    logs = " ".join(m for _, m in treporter.logs)
    assert "overlapping windows" in logs  # long sequences are read whole, not cut
    assert "targets dense, key, query, value" in logs and "heads classifier" in logs
    adapter = studio.registry.get_adapter(summary["adapter_id"])
    config = json.loads((Path(adapter.path) / "adapter_config.json").read_text())
    targets = set(config["target_modules"])
    assert {"query", "key", "value", "dense"} <= targets  # attention.output.dense, intermediate.dense, output.dense
    assert "classifier" in config["modules_to_save"]
    assert summary["eval_accuracy"] is not None

    # evaluation per window and per sequence (the windows' logits pooled by their mean)
    from studio.schema import EvalRequest

    evaluation = EvalRequest(adapter_id=adapter.id, dataset_id=dataset.id, metrics=["accuracy"], max_examples=12)
    ereporter = MemoryReporter()
    scored = get_handler("eval")(evaluation, ereporter, studio.ctx(evaluation))
    metrics = scored["metrics"]
    assert {"accuracy", "window_accuracy"} <= set(metrics)
    # 12 sequences scored, so the per-sequence accuracy is a multiple of 1/12
    assert round(metrics["accuracy"] * 12, 6) == round(metrics["accuracy"] * 12)


def test_a_roformer_encoder_pretrains_and_a_pooled_lora_classifier_trains_on_it(studio, tmp_path):
    """architecture="roformer": rotary positions, BERT's module names, so the same LoRA targets; the head pools."""
    dataset = studio.datasets.add(lncrna_subset(tmp_path, 24), mapping={"text": "sequence", "label": "label"})
    request = tiny_pretrain(
        dataset.id, name="lnc-roformer", architecture="roformer", tokenizer="codon", classifier_pooling="mean"
    )
    reporter = MemoryReporter()
    result = get_handler("pretrain")(request, reporter, studio.ctx(request))
    assert result["architecture"] == "roformer" and result["tokenizer"] == {"kind": "codon", "k": 1}
    assert result["eval_loss"] < result["first_eval_loss"]
    assert any("RoFormer (rotary positions) encoder tiny" in message for _, message in reporter.logs)
    config = json.loads((Path(result["base_model_path"]) / "config.json").read_text())
    assert config["model_type"] == "roformer" and config["classifier_pooling"] == "mean"
    assert "RoFormer" in {m.name: m for m in studio.registry.list_base_models()}["lnc-roformer"].description

    train = TrainRequest(
        dataset_id=dataset.id,
        base_model="lnc-roformer",
        task="classification",
        variant="lora",
        hyper=TrainingHyperParams(
            max_steps=3,
            batch_size=4,
            learning_rate=1e-3,
            window_loss="pooled_max",
            head_learning_rate=0.01,
            validation_fraction=0.2,
            eval_every=1000,
            log_every=1,
        ),
    )
    summary = get_handler("train")(train, MemoryReporter(), studio.ctx(train))
    # validation scores as training pools: one prediction per held-out sequence, not per window
    from studio.training.data import split_indices

    held_out = len(split_indices(24, 0.2, train.seed)[1])
    assert round(summary["eval_accuracy"] * held_out, 6) == round(summary["eval_accuracy"] * held_out)
    adapter = studio.registry.get_adapter(summary["adapter_id"])
    adapter_config = json.loads((Path(adapter.path) / "adapter_config.json").read_text())
    assert {"query", "key", "value", "dense"} <= set(adapter_config["target_modules"])
    assert "classifier" in adapter_config["modules_to_save"]  # RoFormer's head (dense + out_proj), trained in full

    from studio.schema import EvalRequest

    evaluation = EvalRequest(adapter_id=adapter.id, dataset_id=dataset.id, metrics=["accuracy"], max_examples=8)
    metrics = get_handler("eval")(evaluation, MemoryReporter(), studio.ctx(evaluation))["metrics"]
    assert {"accuracy", "window_accuracy"} <= set(metrics)
    assert round(metrics["accuracy"] * 8, 6) == round(metrics["accuracy"] * 8)  # 8 sequences, pooled


def test_refuses_a_dataset_without_sequences(studio, tmp_path):
    path = tmp_path / "words.jsonl"
    path.write_text(
        "".join(json.dumps({"text": t, "label": t.split()[0]}) + "\n" for t in ["good film"] * 4 + ["bad day"] * 4)
    )
    dataset = studio.datasets.add(path)
    request = tiny_pretrain(dataset.id)
    with pytest.raises(ValidationFailed, match="no column of DNA, RNA or protein sequences"):
        get_handler("pretrain")(request, MemoryReporter(), studio.ctx(request))
    request = tiny_pretrain(dataset.id, sequence_column="text")
    with pytest.raises(ValidationFailed, match="does not hold DNA, RNA or protein"):
        get_handler("pretrain")(request, MemoryReporter(), studio.ctx(request))


def test_kmer_masks_whole_spans():
    from studio.sequences.pretrain import MLM_IGNORE, mask_batch
    from studio.sequences.tokenizers import build_tokenizer, encode_sequences

    tok = build_tokenizer("kmer", k=4)
    rng = random.Random(0)
    seqs = ["".join(rng.choice("ACGT") for _ in range(300)) for _ in range(4)]
    enc = encode_sequences(tok, seqs, return_tensors="pt", padding=True)
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    out = mask_batch(batch, tok, 0.15, 4, torch.Generator().manual_seed(0))
    chosen = out["labels"] != MLM_IGNORE
    assert 0.08 < chosen.float().mean() < 0.2
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # never [CLS] or [SEP]
    # every chosen run of positions is at least 2k - 1 long (spans, possibly merged), except at the end
    for row in chosen.tolist():
        body = row[1:-1]
        runs, n = [], 0
        for value in body + [False]:
            if value:
                n += 1
            elif n:
                runs.append(n)
                n = 0
        assert runs and min(runs[:-1] or [7]) >= 7
        # ... so each run hides k whole nucleotides from every unmasked token. Token t spells nucleotides
        # t .. t+3; a nucleotide is hidden when every token spelling it is chosen. (Spans of only k
        # tokens would hide ONE nucleotide each: the neighbours on both sides spell the other three.)
        hidden = [all(body[t] for t in range(max(0, j - 3), min(len(body) - 1, j) + 1)) for j in range(len(body) + 3)]
        starts = [t for t in range(len(body)) if body[t] and (t == 0 or not body[t - 1])]
        for start, length in list(zip(starts, runs, strict=True))[:-1]:
            assert sum(hidden[start : start + length + 3]) >= 4
    assert (out["input_ids"][chosen] == tok.mask_token_id).float().mean() > 0.6


def test_auto_size_follows_tokens_and_device():
    from studio.sequences.pretrain import encoder_shape

    request = PretrainRequest(dataset_id=1)
    assert encoder_shape(request, 10_000, "cpu")[0] == "tiny"
    assert encoder_shape(request, 5_000_000, "cpu")[0] == "small"
    assert encoder_shape(request, 50_000_000, "cpu")[0] == "small"
    assert encoder_shape(request, 50_000_000, "cuda")[0] == "base"
    assert encoder_shape(PretrainRequest(dataset_id=1, hidden_size=48, num_heads=3), 0, "cpu")[1:] == (48, 2, 3)


def test_cli_queues_a_pretrain_job_with_a_time_estimate(monkeypatch, settings, tmp_path):
    from click.testing import CliRunner

    from studio.cli import cli
    from studio.cli.common import services

    monkeypatch.setenv("STUDIO_DATA_DIR", str(settings.data_dir))
    services.cache_clear()
    added = services().datasets.add(lncrna_subset(tmp_path, 10), mapping={"text": "sequence", "label": "label"})
    args = ["pretrain", "--dataset", str(added.id), "--name", "enc", "--size", "tiny", "--k", "4"]
    args += ["--set", "max_steps=5", "--set", "max_length=64", "--set", "window_overlap=8"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "tokenizer overlapping 4-mers" in result.output and "time estimate: about" in result.output
    assert "queued pre-train job 1" in result.output
    request = services().jobs.get(1).request
    assert request["kind"] == "pretrain" and request["k"] == 4 and request["max_steps"] == 5
    assert request["architecture"] == "bert"  # the default
    args = [
        "pretrain",
        "--dataset",
        str(added.id),
        "--name",
        "rot",
        "--architecture",
        "roformer",
        "--tokenizer",
        "codon",
    ]
    result = CliRunner().invoke(
        cli,
        [*args, "--set", "max_steps=5", "--set", "max_length=34", "--set", "window_overlap=4"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "RoFormer (rotary positions) encoder" in result.output and "codons in each of the 3" in result.output
    assert services().jobs.get(2).request["architecture"] == "roformer"
    bad = CliRunner().invoke(cli, ["pretrain", "--dataset", str(added.id), "--set", "nope=1"])
    assert bad.exit_code != 0 and "nope" in str(bad.exception or bad.output)
