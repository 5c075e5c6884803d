"""Issue #19 item 6: a motif placed ANYWHERE in long sequences is found by encoder + LoRA with windows
and pooling, while the same pipeline that reads only the first window (a silent cut) stays near chance.

Synthetic data: random DNA of 600-1,200 nt; a positive sequence holds a 20-nt motif (three copies,
each at a uniformly random position after the first window), a negative holds none. With a single
copy the windowed classifier did not learn either: every window is labelled with its sequence's
label, so only one window in eight of a positive sequence carries the motif, and in 300-600 LoRA
steps the training loss stayed at ln 2 (a limit of per-window training, noted in the docs). The whole
product path runs through the job handlers: ``pretrain`` (masked-LM, briefly), ``train`` (LoRA
classifier on windows) and ``eval`` (windows' logits pooled per sequence, F1/MCC/AUROC and the
confusion matrix). The "first window" pipeline is the same, on sequences cut to what the first window
of the encoder holds — what a tokenizer's ``truncation=True`` would feed the model.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from studio.jobs.handlers import get_handler
from studio.progress import MemoryReporter
from studio.schema import EvalRequest, PretrainRequest, TrainingHyperParams, TrainRequest

MOTIF = "GC" * 10  # a 20-nt GC repeat: 18 of its 3-mers are GCG/CGC (random DNA: 2 in 32)
WINDOW = 130  # tokens: 128 overlapping 3-mers between [CLS] and [SEP]
FIRST_WINDOW_NT = WINDOW - 2 + 2  # 128 3-mers span 130 nucleotides
# Copies per positive sequence. With one copy in ~8 windows a window's label is right about the
# motif one time in eight and the LoRA classifier learnt nothing in 600 steps (see the module doc).
# Weighting each window by 1 / (windows of its sequence) (studio.training.tokenise) balances
# sequences, not this label noise: with ONE copy and the weights the test still measured
# accuracy 0.5 (200 steps). The loss on pooled per-sequence logits (window_loss pooled_max /
# pooled_mean, tests/sequences/test_pooled_window_loss.py) did not learn one copy at this budget
# either (measured, 1 copy, 300-600 nt, batch 8 sequences, lr 1e-2: training loss flat at ln 2 for
# 100-300 steps; one 150-step run broke out late, accuracy 0.68 / 0.75, AUROC 0.89 / 0.80): the tiny
# encoder's first-token features barely see the motif, whatever the loss. So three copies stay.
# Later (motif1 branch): classifier_pooling="mean" (pre-training job) + window_loss="pooled_max" +
# head_learning_rate=0.1, lr 5e-3, batch 8 sequences, 150 steps, 1 copy, this pipeline: seed 0
# passed (>= 0.8), seed 2 accuracy 0.975 / MCC 0.95 / AUROC 0.98 (first window 0.44), seed 1 only
# 0.65 (0.75 at 220 steps), and each run took 75-130 s on the shared core: not yet robust or quick
# enough to replace three copies.
COPIES = 3


def motif_rows(n: int, seed: int) -> list[dict]:
    """``n`` balanced rows of random DNA, 600-1,200 nt; label 1 when the motif is inside.

    A positive holds ``COPIES`` copies of the motif, each at a uniformly random place after the
    first window; a negative holds none (random DNA that happens to contain it is redrawn).
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        while True:
            seq = "".join(rng.choice("ACGT") for _ in range(rng.randint(600, 1200)))
            if MOTIF not in seq:
                break
        if positive:
            for _ in range(COPIES):
                at = rng.randint(FIRST_WINDOW_NT, len(seq) - len(MOTIF))
                seq = seq[:at] + MOTIF + seq[at + len(MOTIF) :]
        rows.append({"sequence": seq, "label": int(positive)})
    return rows


@pytest.fixture
def studio(tmp_path):
    from models_db.registry import Registry
    from studio.device import detect_device
    from studio.jobs.context import JobContext
    from studio.services.datasets import DatasetService
    from studio.settings import Settings

    settings = Settings(data_dir=tmp_path / "data")
    settings.ensure_dirs()
    registry = Registry.from_url(f"sqlite:///{tmp_path}/r.db")

    class Studio:
        datasets = DatasetService(registry, settings)

        def add(self, rows, name):
            path = tmp_path / f"{name}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            return self.datasets.add(path, name=name, mapping={"text": "sequence", "label": "label"})

        def run(self, request):
            job = registry.create_job(kind=request.kind, request=request.model_dump(mode="json"), schema_version=1)
            ctx = JobContext(
                job_id=job.id, settings=settings, registry=registry, device=detect_device("cpu"), attempt=1
            )
            return get_handler(request.kind)(request, MemoryReporter(), ctx)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Studio()
    torch.set_num_threads(threads)
    registry.dispose()


def classify(studio, train_ds, test_ds, base: str) -> dict:
    """LoRA classifier on ``base`` trained on ``train_ds``, evaluated per sequence on ``test_ds``."""
    train = TrainRequest(
        dataset_id=train_ds.id,
        base_model=base,
        task="classification",
        variant="lora",
        variant_params={"r": 8, "lora_alpha": 16},
        seed=0,
        hyper=TrainingHyperParams(
            max_steps=TRAIN_STEPS,
            batch_size=16,
            learning_rate=5e-3,
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


TRAIN_STEPS = 200


@pytest.mark.slow
def test_motif_anywhere_needs_windows(studio):
    train_rows, test_rows = motif_rows(160, seed=1), motif_rows(80, seed=2)
    # Every copy of the motif lies beyond what the first window reads.
    assert all(MOTIF not in r["sequence"][: FIRST_WINDOW_NT + len(MOTIF) - 1] for r in train_rows + test_rows)
    assert all((MOTIF in r["sequence"]) == bool(r["label"]) for r in train_rows + test_rows)

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
        max_steps=30,
        batch_size=32,
        learning_rate=3e-3,
        warmup_ratio=0.0,
        validation_fraction=0.05,
        eval_every=1000,
        save_every=1000,
        seed=0,
    )
    studio.run(pretrain)

    windowed = classify(studio, train_ds, test_ds, "motif-encoder")
    metrics = windowed["metrics"]
    assert metrics["accuracy"] >= 0.8, metrics
    assert metrics["mcc"] >= 0.6 and metrics["auroc"] >= 0.85, metrics
    matrix = windowed["models"][0]["confusion"]["matrix"]
    assert sum(map(sum, matrix)) == len(test_rows)  # one prediction per sequence, not per window

    def cut(rows):
        return [{**r, "sequence": r["sequence"][:FIRST_WINDOW_NT]} for r in rows]

    first_train, first_test = studio.add(cut(train_rows), "first-train"), studio.add(cut(test_rows), "first-test")
    first = classify(studio, first_train, first_test, "motif-encoder")["metrics"]
    assert first["accuracy"] <= 0.65, first
    assert metrics["accuracy"] - first["accuracy"] >= 0.2
