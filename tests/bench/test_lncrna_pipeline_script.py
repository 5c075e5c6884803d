"""scripts/lncrna_pipeline.py: its recipes build valid job requests, and the pooled full fine-tuning
batches whole sequences and scores one prediction per sequence (a tiny random encoder, two steps)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
for path in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import lncrna_pipeline  # noqa: E402

from studio.schema import PretrainRequest, TrainingHyperParams  # noqa: E402


def test_the_documented_recipe_stays_the_default_and_unchanged():
    sizes = lncrna_pipeline.recipe_sizes("windows", quick=False)
    assert sizes is lncrna_pipeline.SIZES["full"]
    assert sizes["pretrain"]["tokenizer"] == "nucleotide" and sizes["pretrain"]["max_length"] == 256
    assert "classifier_pooling" not in sizes["pretrain"]
    steps = [sizes[stage]["max_steps"] for stage in ("pretrain", "lora", "full_ft")]
    assert steps == [450, 350, 350]
    hyper = TrainingHyperParams(**lncrna_pipeline.lora_hyper(sizes["lora"]))
    assert hyper.window_loss == "per_window" and hyper.head_learning_rate is None
    assert lncrna_pipeline.results_path("windows", False).name == "lncrna_pipeline.json"
    assert lncrna_pipeline.results_path("windows", True).name == "lncrna_pipeline_quick.json"


@pytest.mark.parametrize("quick", [False, True])
def test_the_pooled_recipe_sets_the_motif_tests_options(quick):
    sizes = lncrna_pipeline.recipe_sizes("pooled", quick)
    pretrain = PretrainRequest(dataset_id=1, name="lnc-bert", size="tiny", **sizes["pretrain"])
    assert pretrain.classifier_pooling == "mean"
    assert (pretrain.tokenizer, pretrain.k, pretrain.max_length) == ("kmer", 3, 66)
    hyper = TrainingHyperParams(**lncrna_pipeline.lora_hyper(sizes["lora"]))
    assert hyper.window_loss == "pooled_max" and hyper.head_learning_rate == 0.2
    assert hyper.learning_rate == 5e-3 and hyper.batch_size == 8  # sequences, not windows
    assert sizes["full_ft"]["head_learning_rate"] == 0.2
    name = lncrna_pipeline.results_path("pooled", quick).name
    assert name == ("lncrna_pipeline_pooled_quick.json" if quick else "lncrna_pipeline_pooled.json")


def dna_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"text": "".join(rng.choice("ACGT") for _ in range(rng.randint(60, 200))), "label": i % 2} for i in range(n)
    ]


def test_pooled_full_fine_tuning_batches_whole_sequences(tmp_path, monkeypatch):
    from studio.sequences.pretrain import build_encoder
    from studio.sequences.tokenizers import build_tokenizer
    from studio.training import data
    from studio.training.tokenise import encode_rows

    tokenizer = build_tokenizer("kmer", 3, model_max_length=20)
    build_encoder(tokenizer, 16, 1, 2, 20, seed=0, pooling="mean").save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    train_rows, test_rows = dna_rows(6, seed=1), dna_rows(5, seed=2)
    windows = encode_rows(train_rows, tokenizer, task="classification", max_length=20, labels=[0, 1]).examples
    per_sequence = {s: sum(e["sequence"] == s for e in windows) for s in {e["sequence"] for e in windows}}
    assert min(per_sequence.values()) > 1  # every sequence is several windows

    batches = []
    collate = data.collate
    monkeypatch.setattr(data, "collate", lambda ex, pad: batches.append(ex) or collate(ex, pad))
    cfg = dict(max_steps=2, batch_size=2, learning_rate=1e-3, head_learning_rate=0.2)
    torch.set_num_threads(1)
    result = lncrna_pipeline.full_fine_tune(tmp_path, train_rows, test_rows, [0, 1], cfg, seed=0)

    for batch in batches[:2]:  # the two training steps: whole sequences, two of them
        ids = [e["sequence"] for e in batch]
        assert len(set(ids)) == 2 and all(ids.count(s) == per_sequence[s] for s in set(ids))
    assert result["classifier_pooling"] == "mean" and result["window_pooling"] == "max"
    assert sum(map(sum, result["confusion"]["matrix"])) == len(test_rows)  # one prediction per sequence
    assert result["test_windows"] > len(test_rows)


@pytest.mark.parametrize("quick", [False, True])
def test_the_orf_recipe_reads_long_3mer_windows_with_the_pooled_options(quick):
    sizes = lncrna_pipeline.recipe_sizes("orf", quick)
    pretrain = PretrainRequest(dataset_id=1, name="lnc-bert", size="tiny", **sizes["pretrain"])
    assert (pretrain.tokenizer, pretrain.k, pretrain.classifier_pooling) == ("kmer", 3, "mean")
    if not quick:  # ~170 codons a window: long enough to hold a stop-free reading frame of a coding sequence
        assert pretrain.max_length >= 510 and pretrain.window_overlap == 64
        assert (pretrain.hidden_size, pretrain.num_layers, pretrain.num_heads) == (64, 2, 4)
    hyper = TrainingHyperParams(**lncrna_pipeline.lora_hyper(sizes["lora"]))
    assert hyper.window_loss == "pooled_max" and hyper.head_learning_rate == 0.2
    assert sizes["full_ft"]["head_learning_rate"] == 0.2
    name = lncrna_pipeline.results_path("orf", quick).name
    assert name == ("lncrna_pipeline_orf_quick.json" if quick else "lncrna_pipeline_orf.json")


def test_set_and_steps_change_a_copy_of_the_recipe():
    lp = lncrna_pipeline
    recipe = lp.recipe_sizes("orf", quick=False)
    changed = lp.with_overrides(recipe, "5,6,7", ["lora.learning_rate=0.001", "pretrain.tokenizer=nucleotide"])
    assert [changed[s]["max_steps"] for s in ("pretrain", "lora", "full_ft")] == [5, 6, 7]
    assert changed["lora"]["learning_rate"] == 0.001 and changed["pretrain"]["tokenizer"] == "nucleotide"
    assert recipe["lora"]["learning_rate"] == 5e-3 and recipe["lora"]["max_steps"] == 320  # the recipe untouched
    with pytest.raises(SystemExit, match="STAGE.FIELD=VALUE"):
        lp.with_overrides(recipe, None, ["adapter.rank=4"])
