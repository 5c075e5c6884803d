"""Issue #19 item 6: a motif placed ANYWHERE in long sequences is found by encoder + LoRA with windows
and pooling, while the same pipeline that reads only the first window (a silent cut) stays near chance.

Synthetic data: random DNA of 400-800 nt; a positive sequence holds ONE copy of a 20-nt motif, at a
uniformly random position after the first window; a negative holds none. The encoder reads 66-token
windows (64 3-mers), so a sequence spans 7-15 windows and the motif sits in one of them (two when it
falls in an overlap). Three settings make one copy learnable (what was measured without them: the
comment at COPIES): the classifier reads the mean of the window's token states
(``classifier_pooling="mean"`` of the pre-training job, not [CLS]), the loss is applied once per
sequence on the smooth max of its windows' logits (``window_loss="pooled_max"``), and the new head
learns at 0.2 (``head_learning_rate``) while the LoRA factors learn at 5e-3. The whole product path
runs through the job handlers: ``pretrain`` (masked-LM, briefly), ``train`` (LoRA classifier on
windows) and ``eval`` (windows' logits pooled per sequence, F1/MCC/AUROC and the confusion matrix).
The "first window" pipeline is the same, on sequences cut to what the first window of the encoder
holds — what a tokenizer's ``truncation=True`` would feed the model.
"""

from __future__ import annotations

import json
import random

import pytest

from studio.jobs.handlers import get_handler
from studio.progress import MemoryReporter
from studio.schema import EvalRequest, PretrainRequest, TrainingHyperParams, TrainRequest

MOTIF = "GC" * 10  # a 20-nt GC repeat: 18 of its 3-mers are GCG/CGC (random DNA: 2 in 32)
WINDOW = 66  # tokens: 64 overlapping 3-mers between [CLS] and [SEP]
FIRST_WINDOW_NT = WINDOW - 2 + 2  # 64 3-mers span 66 nucleotides
SEED = 0  # pre-training and training; the data have their own seeds (1: train, 2: test)
# One copy per positive sequence. The way there (1 copy, measured through this pipeline):
# - Per-window loss (every window labelled with its sequence's label, one window in ~8 holding the
#   motif), with or without 1 / (windows of its sequence) weights: accuracy 0.5 in 200-600 steps.
# - [CLS] pooling: training loss flat at ln 2 whatever the window loss (per_window, pooled_mean,
#   pooled_max; lr 5e-3 to 1e-2; 100-300 steps); with every other setting of this test: accuracy
#   0.5, AUROC 0.83 (80 steps). A frozen-encoder probe found the [CLS] state separates windows with
#   and without the motif, but along a direction 14x smaller than the mean of the token states.
# - 130-token windows, 600-1,200 nt, mean pooling + pooled_max + head lr 0.1, 150 steps: seeds 0
#   and 2 passed, seed 1 reached 0.65 (0.75 at 220 steps), 75-130 s a run.
# - This test (66-token windows, 400-800 nt, head lr 0.2, 80 steps of 8 sequences): seeds 0, 1, 2
#   (SEED) accuracy 1.0 / 1.0 / 0.99, AUROC 1.0 each, first window 0.54 / 0.50 / 0.46, 23-40 s a
#   test call (2 cores shared with other jobs); seed 1 with data seeds +10 / +20: 0.99 / 1.0. The
#   66-token window is what made the difference (the motif's 18 3-mers are 28 % of a window's mean,
#   not 14 %): seed 1 with 130-token windows and 400-800 nt: accuracy 0.91 / AUROC 0.97. Each of the
#   three settings is still needed (seed 1, 80 steps): head lr left at 5e-3: accuracy 0.64 (AUROC
#   0.92); per_window loss (batch 16 windows): 0.56 (AUROC 0.92); cls pooling: 0.5. Fewer steps
#   still passed (50: accuracy 1.0).
COPIES = 1


def motif_rows(n: int, seed: int) -> list[dict]:
    """``n`` balanced rows of random DNA, 400-800 nt; label 1 when the motif is inside.

    A positive holds ``COPIES`` copy of the motif at a uniformly random place after the first
    window; a negative holds none (random DNA that happens to contain it is redrawn).
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        while True:
            seq = "".join(rng.choice("ACGT") for _ in range(rng.randint(400, 800)))
            if MOTIF not in seq:
                break
        if positive:
            for _ in range(COPIES):
                at = rng.randint(FIRST_WINDOW_NT, len(seq) - len(MOTIF))
                seq = seq[:at] + MOTIF + seq[at + len(MOTIF) :]
        rows.append({"sequence": seq, "label": int(positive)})
    return rows


@pytest.fixture
def studio(studio, tmp_path):
    """The sequence tests' studio (tests/sequences/conftest.py) with two shortcuts: add rows, run a job."""
    base = studio

    class Studio:
        datasets = base.datasets

        def add(self, rows, name):
            path = tmp_path / f"{name}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            return self.datasets.add(path, name=name, mapping={"text": "sequence", "label": "label"})

        def run(self, request):
            return get_handler(request.kind)(request, MemoryReporter(), base.ctx(request))

    return Studio()


def classify(studio, train_ds, test_ds, base: str) -> dict:
    """LoRA classifier on ``base`` trained on ``train_ds``, evaluated per sequence on ``test_ds``."""
    train = TrainRequest(
        dataset_id=train_ds.id,
        base_model=base,
        task="classification",
        variant="lora",
        variant_params={"r": 8, "lora_alpha": 16},
        seed=SEED,
        hyper=TrainingHyperParams(
            window_loss="pooled_max",  # batch_size counts sequences; one loss per sequence
            max_steps=TRAIN_STEPS,
            batch_size=8,
            learning_rate=5e-3,
            head_learning_rate=0.2,
            warmup_ratio=0.05,
            validation_fraction=0.0,
            eval_every=100_000,
            save_every=100_000,
            log_every=50,
        ),
    )
    adapter_id = studio.run(train)["adapter_id"]
    request = EvalRequest(adapter_id=adapter_id, dataset_id=test_ds.id, metrics=["accuracy"], max_examples=1000)
    return studio.run(request)


TRAIN_STEPS = 80


@pytest.mark.slow
def test_motif_anywhere_needs_windows(studio):
    train_rows, test_rows = motif_rows(160, seed=1), motif_rows(80, seed=2)
    # Every copy of the motif lies beyond what the first window reads.
    assert all(MOTIF not in r["sequence"][: FIRST_WINDOW_NT + len(MOTIF) - 1] for r in train_rows + test_rows)
    assert all(r["sequence"].count(MOTIF) == r["label"] for r in train_rows + test_rows)  # one copy

    train_ds, test_ds = studio.add(train_rows, "motif-train"), studio.add(test_rows, "motif-test")
    pretrain = PretrainRequest(
        dataset_id=train_ds.id,
        name="motif-encoder",
        tokenizer="kmer",
        k=3,
        size="tiny",
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        max_length=WINDOW,
        window_overlap=8,
        classifier_pooling="mean",
        max_steps=30,
        batch_size=32,
        learning_rate=3e-3,
        warmup_ratio=0.0,
        validation_fraction=0.05,
        eval_every=1000,
        save_every=1000,
        seed=SEED,
    )
    studio.run(pretrain)

    windowed = classify(studio, train_ds, test_ds, "motif-encoder")
    metrics = windowed["metrics"]
    assert metrics["accuracy"] >= 0.85, metrics
    assert metrics["mcc"] >= 0.7 and metrics["auroc"] >= 0.9, metrics
    matrix = windowed["models"][0]["confusion"]["matrix"]
    assert sum(map(sum, matrix)) == len(test_rows)  # one prediction per sequence, not per window

    def cut(rows):
        return [{**r, "sequence": r["sequence"][:FIRST_WINDOW_NT]} for r in rows]

    first_train, first_test = studio.add(cut(train_rows), "first-train"), studio.add(cut(test_rows), "first-test")
    first = classify(studio, first_train, first_test, "motif-encoder")["metrics"]
    assert first["accuracy"] <= 0.65, first
    assert metrics["accuracy"] - first["accuracy"] >= 0.2
