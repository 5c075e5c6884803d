"""LoRA-BERT on lncRNA vs mRNA: pre-train an encoder, LoRA-tune it, fully fine-tune it, beside the baseline.

Issue #19 item 5. Everything runs through the studio's own job handlers (no broker, an
embedded SQLite registry in a temporary data dir), on one CPU thread by default:

(a) ``pretrain`` job: a BERT-style encoder pre-trained from scratch with masked-LM on the TRAIN
    sequences (single-nucleotide tokens: nothing leaks through overlapping k-mers and the loss
    compares with ln 4; windows), then a ``train`` job: LoRA on attention and
    feed-forward layers + the classification head, on windows labelled with their sequence's label;
(b) the same pre-trained encoder FULLY fine-tuned. The studio has no full fine-tuning option
    (every train job is a LoRA variant), so this is done here with transformers directly:
    ``BertForSequenceClassification`` from the pre-trained encoder, the same windows, AdamW on
    every weight, scored the same way (windows' logits averaged per sequence);
(c) the logistic-regression baseline (``include_baseline`` of the eval job that scores (a));
(d) the SmolLM2-135M classifier is not re-run (11.5 min for 80 steps on this CPU): its documented
    number is cited in docs/results/classification_lncrna.md.

Test metrics per sequence: accuracy, F1, MCC, AUROC. Times are wall-clock on this machine.

Five recipes (``--recipe``):

- ``windows`` (the default, the documented run): single-nucleotide tokens, 256-token windows, [CLS]
  pooling, every window trained on its sequence's label (weighted 1 / windows of its sequence);
- ``pooled``: the settings that made the synthetic "motif anywhere" test learnable
  (tests/sequences/test_motif_windows.py): overlapping 3-mers in short windows (66 tokens), the
  classifier reads the MEAN of a window's token states (``classifier_pooling="mean"``), one loss per
  sequence on the smooth max (log-sum-exp) of its windows' logits (``window_loss="pooled_max"``,
  batches count sequences), and the new head learns at its own, larger rate (``head_learning_rate``).
  (b) uses the same pooling, loss and head rate. Measured: 15.8 min on one thread, load average ~5;
- ``orf``: the pooled recipe's pooling, loss and head rate on LONG 3-mer windows (512 3-mers, overlap
  64, ~170 codons a window): the baseline's signal is the longest open reading frame (see the feature
  ablation in docs/results/classification_lncrna.md), and a window inside a coding sequence has one
  frame with no stop codon across it, which a 66-token window cannot show;
- ``codon``: the pooled recipe's pooling, loss and head rate on CODON tokens read in each of the three
  reading frames (``tokenizer="codon"``: windows of 128 codons, ~384 nt, a new one every 32 codons), so
  a stop codon is a token of its own frame and "no stop in this window" needs no position arithmetic;
  LoRA at lr 1e-3 (the orf recipe's better rate). The best LoRA-BERT recipe so far (0.893-0.911 over three seeds vs 0.921). Its full
  settings are studio/sequences/recipes.py's CODING_POTENTIAL, the Train tab's presets "Coding potential
  (codons, 3 frames)" and "Sequence classifier (codons)";
- ``rotary``: the codon recipe on a RoFormer encoder (``architecture="roformer"``: rotary positions, which
  learn "an ATG, then no stop codon for N codons", scripts/positional_rule_probe.py) with 256-codon windows
  every 128 codons, 2,560 LoRA steps and a head rate of 0.02 (RoFormer's head has two layers). Its settings
  are ROTARY_CODING_POTENTIAL, the Train tab's presets "Coding potential, rotary encoder" and "Sequence
  classifier (codons, rotary encoder)". ~65 min on one thread (0.919-0.930 over four seeds, mean 0.925, vs 0.921).

    python scripts/lncrna_pipeline.py --data DIR                    # the documented run (~25 min on 1 thread, loaded CPU)
    python scripts/lncrna_pipeline.py --data DIR --recipe pooled    # mean pooling + pooled_max loss (~16 min)
    python scripts/lncrna_pipeline.py --data DIR --recipe orf       # long 3-mer windows (~25-35 min)
    python scripts/lncrna_pipeline.py --data DIR --recipe codon     # codons in three frames (~19 min + (b))
    python scripts/lncrna_pipeline.py --data DIR --recipe rotary    # codons on a RoFormer encoder (~65 min + (b))
    python scripts/lncrna_pipeline.py --data DIR --recipe rotary --score-kept 4   # + test scores of 4 adapters kept along LoRA
    python scripts/lncrna_pipeline.py --data DIR --recipe rotary --keep runs/r0   # keep encoder and adapters
    python scripts/lncrna_pipeline.py --rescore runs/r0 --out RUN.json   # paired tests of its adapters vs baseline
    python scripts/lncrna_pipeline.py --data DIR --quick            # a few minutes: smaller encoder, fewer steps
    python scripts/lncrna_pipeline.py --quick                       # the in-repo sample (data/samples/lncrna_athaliana)

Writes bench/results/lncrna_pipeline[_pooled|_orf|_codon|_rotary][_quick].json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from studio.sequences.recipes import CODING_POTENTIAL, ROTARY_CODING_POTENTIAL, SequenceRecipe  # noqa: E402

DEFAULT_DATA = REPO_ROOT / "data" / "samples" / "lncrna_athaliana"
RESULTS_DIR = REPO_ROOT / "bench" / "results"

# (encoder, LoRA, full fine-tuning) settings of the "windows" recipe; "full" is the documented run.
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "pretrain": dict(
            tokenizer="nucleotide",
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            max_length=256,
            window_overlap=32,
            max_steps=450,
            batch_size=16,
            learning_rate=3e-3,
            warmup_ratio=0.1,
        ),
        "lora": dict(max_steps=350, batch_size=16, learning_rate=2e-3, rank=16),
        "full_ft": dict(max_steps=350, batch_size=16, learning_rate=5e-4),
    },
    "quick": {
        "pretrain": dict(
            tokenizer="nucleotide",
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            max_length=128,
            window_overlap=16,
            max_steps=60,
            batch_size=16,
            learning_rate=3e-3,
            warmup_ratio=0.1,
        ),
        "lora": dict(max_steps=100, batch_size=16, learning_rate=2e-3, rank=8),
        "full_ft": dict(max_steps=100, batch_size=16, learning_rate=1e-3),
    },
}


# The "pooled" recipe: the motif test's three settings on short 3-mer windows. Steps were sized from
# a probe on the full data (``--steps 20,10,10``, 1 thread, load average 4.4 on the 2 shared cores):
# pre-training 0.14 s a step of 32 windows, LoRA 1.2 s and full fine-tuning 0.6 s a step of 8
# sequences (~180 windows), evaluation 42 s with the baseline: ~20 min in all at that load.
POOLED_SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "pretrain": dict(
            tokenizer="kmer",
            k=3,
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            max_length=66,  # 64 3-mers: short windows, so local evidence is not diluted by the mean
            window_overlap=8,
            classifier_pooling="mean",
            max_steps=2000,  # 64 k windows, ~1.4 passes over the 44.9 k training windows
            batch_size=32,
            learning_rate=3e-3,
            warmup_ratio=0.1,
        ),
        # batch_size counts SEQUENCES here (all their windows in one micro-batch)
        # 400 steps × 8 sequences: ~1.6 passes over the 1,995 training sequences (~22 windows each)
        "lora": dict(max_steps=400, batch_size=8, learning_rate=5e-3, head_learning_rate=0.2, rank=16),
        "full_ft": dict(max_steps=400, batch_size=8, learning_rate=5e-4, head_learning_rate=0.2),
    },
    "quick": {
        "pretrain": dict(
            tokenizer="kmer",
            k=3,
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            max_length=66,
            window_overlap=8,
            classifier_pooling="mean",
            max_steps=40,
            batch_size=32,
            learning_rate=3e-3,
            warmup_ratio=0.1,
        ),
        "lora": dict(max_steps=30, batch_size=8, learning_rate=5e-3, head_learning_rate=0.2, rank=8),
        "full_ft": dict(max_steps=30, batch_size=8, learning_rate=1e-3, head_learning_rate=0.2),
    },
}


# The "orf" recipe: the pooled recipe's pooling, loss and head rate on LONG 3-mer windows. The baseline's
# signal is the longest open reading frame (docs/results/classification_lncrna.md, feature ablation), and a
# 512-token window (~510 nt, ~170 codons) inside a coding sequence has one frame with no stop codon across
# it, which a 66-token window cannot show. Steps were sized from a probe on the full data (``--steps 20,10,10``,
# 1 thread, load average ~2): pre-training 1.3 s a step of 16 windows, LoRA 1.7 s and full fine-tuning 1.8 s a
# step of 8 sequences (~26 windows), evaluation 20 s with the baseline: ~25 min in all at that load.
def _pooled_with(which: str, pretrain: dict[str, Any], lora: dict[str, Any], full_ft: dict[str, Any]) -> dict:
    """The pooled recipe's ``which`` ("full"/"quick") settings with these changes (the orf recipe below)."""
    base = POOLED_SIZES[which]
    return {
        "pretrain": {**base["pretrain"], **pretrain},
        "lora": {**base["lora"], **lora},
        "full_ft": {**base["full_ft"], **full_ft},
    }


ORF_SIZES: dict[str, dict[str, Any]] = {
    # 512 3-mers + [CLS] + [SEP]: a window spans ~170 codons; 250 steps x 16 = 4,000 windows, ~0.65 passes
    # over the 6,261 pre-training windows. batch_size counts SEQUENCES in tuning (all their windows, ~3.5
    # a sequence, in one micro-batch): 320 steps x 8 sequences, ~1.3 passes over the 1,995 training sequences.
    "full": _pooled_with(
        "full",
        pretrain=dict(max_length=514, window_overlap=64, max_steps=250, batch_size=16),
        lora=dict(max_steps=320),
        full_ft=dict(max_steps=280),
    ),
    "quick": _pooled_with(
        "quick",
        pretrain=dict(max_length=130, window_overlap=16, max_steps=30, batch_size=16),
        lora=dict(max_steps=20),
        full_ft=dict(max_steps=20),
    ),
}


def recipe_lora(recipe: SequenceRecipe) -> dict[str, Any]:
    """A studio recipe's LoRA settings in this script's terms: its hyperparameters and ``rank`` (+ ``lora_alpha``).

    ``lora_alpha`` is written only when it is not the script's 2 x rank, so ``--set lora.rank=N`` keeps
    scaling alpha with the rank as it does for every recipe.
    """
    rank, alpha = recipe.variant["r"], recipe.variant["lora_alpha"]
    return {**recipe.train_hyper, "rank": rank, **({} if alpha == 2 * rank else {"lora_alpha": alpha})}


def lora_variant_params(lora: dict[str, Any]) -> dict[str, Any]:
    """The ``lora`` variant's parameters of a LoRA setting: r = rank, alpha 2 x rank unless it names one."""
    return {"r": lora["rank"], "lora_alpha": lora.get("lora_alpha", 2 * lora["rank"])}


# The "codon" recipe: codons in three frames (studio/sequences/tokenizers.py, kind "codon"). Its full settings are
# the UI's "Coding potential" preset (studio/sequences/recipes.py, CODING_POTENTIAL), so both stay the same run:
# 128 codons + [CLS] + [SEP] a window, 96 shared (a window every 32 codons: more windows per coding stretch for
# the smooth max to count; seed 0: 16 shared 0.884, 64 shared 0.899, 96 shared 0.911; three seeds: 0.897 vs 0.902); a sequence of
# n nt gives ~3 x n / 96 windows. 3,000 pre-training steps x 32 windows (~1.5 passes over the 62.8 k windows),
# 640 LoRA steps x 8 sequences. Measured: 25.5 min on one thread (docs/results/classification_lncrna.md).
CODON_SIZES: dict[str, dict[str, Any]] = {
    "full": _pooled_with(
        "full",
        pretrain=dict(CODING_POTENTIAL.pretrain),
        lora=recipe_lora(CODING_POTENTIAL),
        full_ft=dict(max_steps=280),
    ),
    "quick": _pooled_with(
        "quick",
        pretrain=dict(tokenizer="codon", k=None, max_length=34, window_overlap=4, max_steps=30),
        lora=dict(max_steps=20, learning_rate=1e-3),
        full_ft=dict(max_steps=20),
    ),
}
# The "rotary" recipe: the codon recipe on a RoFormer encoder (rotary positions) with 256-codon windows, the UI's
# "Coding potential, rotary encoder" preset (studio/sequences/recipes.py, ROTARY_CODING_POTENTIAL).
ROTARY_SIZES: dict[str, dict[str, Any]] = {
    "full": _pooled_with(
        "full",
        pretrain=dict(ROTARY_CODING_POTENTIAL.pretrain),
        lora=recipe_lora(ROTARY_CODING_POTENTIAL),
        full_ft=dict(max_steps=280, head_learning_rate=0.02),
    ),
    "quick": _pooled_with(
        "quick",
        pretrain=dict(
            architecture="roformer", tokenizer="codon", k=None, max_length=34, window_overlap=4, max_steps=30
        ),
        lora=dict(max_steps=20, learning_rate=1e-3, head_learning_rate=0.02),
        full_ft=dict(max_steps=20, head_learning_rate=0.02),
    ),
}
RECIPES = {"windows": SIZES, "pooled": POOLED_SIZES, "orf": ORF_SIZES, "codon": CODON_SIZES, "rotary": ROTARY_SIZES}


def recipe_sizes(recipe: str, quick: bool) -> dict[str, dict[str, Any]]:
    """The (pretrain, lora, full_ft) settings of ``recipe`` (a :data:`RECIPES` name), quick or full."""
    return RECIPES[recipe]["quick" if quick else "full"]


def with_overrides(sizes: dict[str, dict[str, Any]], steps: str | None, sets: list[str]) -> dict[str, dict[str, Any]]:
    """A recipe's settings with ``--steps PRETRAIN,LORA,FULL_FT`` and ``--set STAGE.FIELD=VALUE`` applied (a copy)."""
    sizes = {stage: dict(cfg) for stage, cfg in sizes.items()}
    if steps:
        for stage, n in zip(("pretrain", "lora", "full_ft"), steps.split(","), strict=True):
            sizes[stage]["max_steps"] = int(n)
    for item in sets:
        key, _, value = item.partition("=")
        stage, _, field = key.partition(".")
        if stage not in sizes or not field or not value:
            raise SystemExit(f"--set {item}: write STAGE.FIELD=VALUE with STAGE one of {', '.join(sizes)}")
        try:
            sizes[stage][field] = json.loads(value)  # numbers, true/false, lists
        except ValueError:
            sizes[stage][field] = value  # a word, e.g. tokenizer=nucleotide
    return sizes


def results_path(recipe: str, quick: bool) -> Path:
    """bench/results/lncrna_pipeline[_pooled|_orf|_codon][_quick].json: each recipe keeps its own results."""
    suffix = ("" if recipe == "windows" else f"_{recipe}") + ("_quick" if quick else "")
    return RESULTS_DIR / f"lncrna_pipeline{suffix}.json"


def lora_hyper(lora: dict[str, Any]) -> dict[str, Any]:
    """TrainingHyperParams fields of a LoRA setting: the pooled recipe adds its window loss and head rate."""
    from studio.schema import TrainingHyperParams

    hyper = dict(
        max_steps=lora["max_steps"],
        batch_size=lora["batch_size"],
        learning_rate=lora["learning_rate"],
        validation_fraction=0.05,
        eval_every=100_000,
        log_every=20,
        save_every=100_000,
    )
    if "head_learning_rate" in lora:
        hyper.update(window_loss="pooled_max", head_learning_rate=lora["head_learning_rate"], warmup_ratio=0.05)
    # A studio recipe (recipe_lora) names its hyperparameters itself: they win, so the run is the UI preset's.
    hyper.update({k: v for k, v in lora.items() if k in TrainingHyperParams.model_fields})
    return hyper


class Reporter:
    """The handlers' reporter: logs to stdout with a timestamp, keeps metrics, never cancels."""

    def __init__(self, name: str):
        from studio.progress import MemoryReporter

        self.name, self.inner, self.began = name, MemoryReporter(), time.monotonic()

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    def log(self, message: str, level: str = "info") -> None:
        self.inner.log(message, level)
        print(f"[{self.name} {time.monotonic() - self.began:7.1f}s] {message}", flush=True)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.inner.metrics(step, values)
        if "loss" in values and step % 20 == 0:
            elapsed = time.monotonic() - self.began
            print(f"[{self.name} {elapsed:7.1f}s] step {step}: loss {values['loss']:.4f}", flush=True)


def studio_env(data_dir: Path) -> Any:
    """Settings, registry, dataset service and a job-context factory on ``data_dir``."""
    from models_db.registry import Registry
    from studio.device import detect_device
    from studio.jobs.context import JobContext
    from studio.services.datasets import DatasetService
    from studio.settings import Settings
    from studio.versions import library_versions

    settings = Settings(data_dir=data_dir)
    settings.ensure_dirs()
    # Always a SQLite file of its own (never a DATABASE_URL from the environment), named as the studio names
    # it, so that a run kept with --keep opens in the studio: STUDIO_DATA_DIR=DIR studio run.
    registry = Registry.from_url(f"sqlite:///{data_dir / 'studio.db'}")

    class Env:
        datasets = DatasetService(registry, settings)

        def __init__(self) -> None:
            self.settings, self.registry = settings, registry

        def ctx(self, request: Any) -> Any:
            """A job row for ``request``, claimed by this script at once: the row is a record of what the run
            did, and a queued row would be sent to a worker (and run again) when the folder opens in the studio."""
            job = registry.create_job(kind=request.kind, request=request.model_dump(mode="json"), schema_version=1)
            device = detect_device("cpu")
            registry.claim_job(job.id, "scripts/lncrna_pipeline.py", device.label, library_versions())
            return JobContext(job_id=job.id, settings=settings, registry=registry, device=device, attempt=1)

    return Env()


def run_job(env: Any, request: Any, name: str) -> tuple[dict[str, Any], float]:
    from studio.jobs.handlers import get_handler

    began = time.monotonic()
    ctx = env.ctx(request)
    try:
        result = get_handler(request.kind)(request, Reporter(name), ctx)
    except BaseException as exc:  # the job row says how the run ended, even on Ctrl-C
        env.registry.finish_job(ctx.job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    env.registry.finish_job(ctx.job_id, "succeeded", result=result)
    return result, time.monotonic() - began


def full_fine_tune(encoder_dir: Path, train_rows: list, test_rows: list, labels: list, cfg: dict, seed: int) -> dict:
    """(b): every weight of the pre-trained encoder + a new head trained on the windows; scored per sequence.

    With ``head_learning_rate`` in ``cfg`` (the pooled recipe) it trains like ``window_loss="pooled_max"``:
    ``batch_size`` sequences a step, all their windows, one cross-entropy per sequence on the log-sum-exp
    of its windows' logits, the head in its own AdamW group; scoring then pools by max too. The
    encoder's ``classifier_pooling`` (mean for the pooled recipe) is applied as the studio does.
    """
    import random

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    from studio.evaluation.classification import classification_report, softmax
    from studio.sequences.pooling import apply_classifier_pooling
    from studio.sequences.windows import pool_logits, pool_rows
    from studio.training.data import collate
    from studio.training.tokenise import encode_rows

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    model = AutoModelForSequenceClassification.from_pretrained(encoder_dir, num_labels=len(labels))
    pooling = apply_classifier_pooling(model)
    limit = model.config.max_position_embeddings
    train = encode_rows(train_rows, tokenizer, task="classification", max_length=limit, labels=labels).examples
    test = encode_rows(test_rows, tokenizer, task="classification", max_length=limit, labels=labels).examples
    steps = cfg["max_steps"]
    pooled = "head_learning_rate" in cfg
    if pooled:
        head = [p for n, p in model.named_parameters() if n.startswith("classifier.")]
        body = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
        groups = [{"params": body, "lr": cfg["learning_rate"]}, {"params": head, "lr": cfg["head_learning_rate"]}]
        optimizer = torch.optim.AdamW(groups, lr=cfg["learning_rate"], weight_decay=0.01)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"], weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
    windows_of: dict[int, list[int]] = {}
    for i, e in enumerate(train):
        windows_of.setdefault(e["sequence"], []).append(i)
    units = list(windows_of.values()) if pooled else [[i] for i in range(len(train))]
    rng = random.Random(seed)
    order: list[int] = []
    began = time.monotonic()
    model.train()
    for step in range(steps):
        if len(order) < cfg["batch_size"]:
            fresh = list(range(len(units)))
            rng.shuffle(fresh)
            order += fresh
        chosen, order = order[: cfg["batch_size"]], order[cfg["batch_size"] :]
        rows = [i for u in chosen for i in units[u]]
        batch = collate([train[i] for i in rows], tokenizer.pad_token_id)
        logits_b = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if pooled:
            # one loss per sequence: smooth max of its windows' logits (as window_loss="pooled_max")
            index = torch.tensor([k for k, u in enumerate(chosen) for _ in units[u]], dtype=torch.long)
            per_sequence = pool_rows(logits_b, index, len(chosen), "max")
            targets = torch.tensor([train[units[u][0]]["labels"] for u in chosen], dtype=torch.long)
            loss = torch.nn.functional.cross_entropy(per_sequence, targets)
        else:
            # the studio's loss: each window weighted 1 / (windows of its sequence), weights averaging 1
            per_row = torch.nn.functional.cross_entropy(logits_b, batch["labels"], reduction="none")
            loss = (per_row * batch["weight"]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step % (20 if pooled else 100) == 0:
            print(f"[full-ft {time.monotonic() - began:7.1f}s] step {step}/{steps}: loss {loss.item():.4f}", flush=True)
    tuning_s = time.monotonic() - began
    model.eval()
    logits: list[list[float]] = []
    with torch.inference_mode():
        for start in range(0, len(test), 32):
            batch = collate(test[start : start + 32], tokenizer.pad_token_id)
            logits += model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.tolist()
    window_hits = [max(range(len(r)), key=r.__getitem__) == e["labels"] for r, e in zip(logits, test, strict=True)]
    order_ids, pooled_logits = pool_logits(logits, [e["sequence"] for e in test], "max" if pooled else "mean")
    label_of = {e["sequence"]: e["labels"] for e in test}
    expected = [label_of[s] for s in order_ids]
    predicted = pooled_logits.argmax(-1).tolist()
    report = classification_report(expected, softmax(pooled_logits), labels)
    accuracy = sum(p == e for p, e in zip(predicted, expected, strict=True)) / len(expected)
    return {
        "metrics": {"accuracy": accuracy, "window_accuracy": sum(window_hits) / len(window_hits), **report["metrics"]},
        "confusion": report["confusion"],
        "tuning_s": tuning_s,
        "scoring_s": time.monotonic() - began - tuning_s,
        "steps": steps,
        "classifier_pooling": pooling,
        "window_pooling": "max" if pooled else "mean",
        "train_windows": len(train),
        "test_windows": len(test),
        "trainable_parameters": sum(p.numel() for p in model.parameters()),
    }


def score_kept_adapters(env: Any, adapter_id: int, test_dataset_id: int) -> list[dict[str, Any]]:
    """Test metrics of each adapter kept along the LoRA run (``--score-kept``), in step order.

    Each kept adapter (``<adapter>/checkpoints/step-N``, the final adapter's files and layout) is registered
    as an adapter of its own and scored by the same eval job as the final one, so the numbers compare (it
    carries the run's labels and settings: windows are pooled as trained).
    """
    from studio.schema import EvalRequest
    from studio.training.job import ADAPTER_FILE, sha256_file
    from studio.training.kept_adapters import kept_adapter_dirs

    final = env.registry.get_adapter(adapter_id)
    scores = []
    for folder in kept_adapter_dirs(final.path):
        step = int(folder.name.removeprefix("step-"))
        row = env.registry.add_adapter(
            name=f"{final.name} at step {step}",
            variant=final.variant,
            base_model=final.base_model,
            dataset_id=final.dataset_id,
            ranks=final.ranks,
            trainable_params=final.trainable_params,
            size_bytes=final.size_bytes,
            path=str(folder),
            sha256=sha256_file(folder / ADAPTER_FILE),
            source_job_id=final.source_job_id,
            metrics={},
        )
        request = EvalRequest(
            adapter_id=row.id, dataset_id=test_dataset_id, metrics=["loss", "accuracy"], max_examples=100_000
        )
        scored, eval_s = run_job(env, request, f"eval step {step}")
        entry = next(m for m in scored["models"] if m["key"] == f"adapter:{row.id}")
        scores.append(
            {"step": step, "metrics": entry["metrics"], "confusion": entry.get("confusion"), "scoring_s": eval_s}
        )
    return scores


def table(result: dict[str, Any]) -> str:
    lines = [
        "| model | test accuracy | F1 | MCC | AUROC | pre-training | tuning |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        m = row["metrics"]
        cells = [f"{m[k]:.3f}" if m.get(k) is not None else "—" for k in ("accuracy", "f1", "mcc", "auroc")]
        pre = f"{row['pretrain_s'] / 60:.1f} min" if row.get("pretrain_s") else "—"
        tune = f"{row['tuning_s'] / 60:.1f} min" if row.get("tuning_s") is not None else "—"
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {pre} | {tune} |")
    for kept in result.get("lora_along_training", []):
        m = kept["metrics"]
        cells = [f"{m[k]:.3f}" if m.get(k) is not None else "—" for k in ("accuracy", "f1", "mcc", "auroc")]
        lines.append(f"| (a) LoRA adapter kept at step {kept['step']} | " + " | ".join(cells) + " | — | — |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--quick", action="store_true", help="a small encoder and few steps (minutes)")
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="windows",
        help="windows: the documented run; pooled: 3-mer windows of 66, mean pooling, pooled_max loss, head rate; "
        "orf: the same on 512-token windows (long enough to show a reading frame); codon: codon tokens in three "
        "frames; rotary: codons on a RoFormer encoder with 256-codon windows",
    )
    parser.add_argument(
        "--steps",
        default=None,
        help="PRETRAIN,LORA,FULL_FT: override the recipe's max_steps (a short probe to time steps before a run)",
    )
    parser.add_argument(
        "--score-kept",
        type=int,
        default=0,
        metavar="N",
        help="also keep N LoRA adapters evenly spaced over the run's last half (keep_checkpoints) and score each on "
        "the test rows: a learning curve from one run (the schedule is the full run's, so a step's score is not "
        "that of a shorter run)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the run's studio data (registry, encoder, adapters) in DIR instead of a temporary folder, to "
        "evaluate or serve them afterwards (STUDIO_DATA_DIR=DIR)",
    )
    parser.add_argument(
        "--rescore",
        type=Path,
        default=None,
        metavar="DIR",
        help="no new run: score a run kept with --keep DIR again (final and kept adapters and the baseline in "
        "one eval job, each pair with its paired comparison) and write that into --out",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default bench/results/...)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="STAGE.FIELD=VALUE",
        help="change one setting of the recipe, e.g. --set lora.learning_rate=0.001 (repeatable)",
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from studio.schema import EvalRequest, PretrainRequest, TrainingHyperParams, TrainRequest

    sizes = with_overrides(recipe_sizes(args.recipe, args.quick), args.steps, args.set)
    out = args.out or results_path(args.recipe, args.quick)
    if args.rescore is not None:
        rescore(args.rescore, out)
        return
    began = time.monotonic()
    load = os.getloadavg()
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep}: the folder is not empty; name a new one")
    with tempfile.TemporaryDirectory(prefix="lncrna-") as tmp:
        env = studio_env(args.keep.resolve() if args.keep is not None else Path(tmp) / "data")
        mapping = {"text": "sequence", "label": "label"}
        train_ds = env.datasets.add(args.data / "train.jsonl", name="lncrna-train", mapping=mapping)
        test_ds = env.datasets.add(args.data / "test.jsonl", name="lncrna-test", mapping=mapping)

        # (a) pre-train, then LoRA
        pre = sizes["pretrain"]
        pretrain = PretrainRequest(
            dataset_id=train_ds.id,
            name="lnc-bert",
            validation_fraction=0.05,
            log_every=20,
            eval_every=pre["max_steps"],
            save_every=100_000,
            seed=args.seed,
            **{"size": "tiny", **pre},  # the widths a recipe names win over size anyway
        )
        pre_result, pretrain_s = run_job(env, pretrain, "pretrain")
        lora = sizes["lora"]
        train = TrainRequest(
            dataset_id=train_ds.id,
            base_model="lnc-bert",
            task="classification",
            variant="lora",
            seed=args.seed,
            variant_params=lora_variant_params(lora),
            hyper=TrainingHyperParams(**lora_hyper(lora), keep_checkpoints=args.score_kept),
        )
        train_result, lora_s = run_job(env, train, "lora")
        evaluation = EvalRequest(
            adapter_id=train_result["adapter_id"],
            dataset_id=test_ds.id,
            metrics=["loss", "accuracy"],
            max_examples=100_000,
            include_baseline=True,
        )
        scored, eval_s = run_job(env, evaluation, "eval")
        models = {m["key"]: m for m in scored["models"]}
        lora_entry = models[f"adapter:{train_result['adapter_id']}"]
        baseline_entry = models["baseline:logistic-regression"]
        paired = scored.get("paired", [])
        along_training = score_kept_adapters(env, train_result["adapter_id"], test_ds.id)

        # (b) the same encoder, every weight trained
        from studio.evaluation.examples import read_rows

        train_rows, test_rows = read_rows(train_ds.stored_path, None), read_rows(test_ds.stored_path, None)
        labels = list(train_ds.report["labels"])
        full = full_fine_tune(
            Path(pre_result["base_model_path"]), train_rows, test_rows, labels, sizes["full_ft"], args.seed
        )
        env.registry.dispose()

    result = {
        "data": str(args.data.name),
        "quick": args.quick,
        "recipe": args.recipe,
        "threads": args.threads,
        "load_average_at_start": [round(x, 2) for x in load],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "total_s": time.monotonic() - began,
        "sizes": sizes,
        "pretrain": {k: v for k, v in pre_result.items() if isinstance(v, int | float | str | dict | list)},
        "lora_train": {k: v for k, v in train_result.items() if isinstance(v, int | float | str)},
        "lora_along_training": along_training,
        # (a) against (c) on the same test rows: exact McNemar test and a paired bootstrap interval
        "paired": paired,
        "rows": [
            {
                "model": "(a) pre-trained encoder + LoRA",
                "metrics": lora_entry["metrics"],
                "pretrain_s": pretrain_s,
                "tuning_s": lora_s,
                "scoring_s": eval_s,
                "confusion": lora_entry.get("confusion"),
            },
            {
                "model": "(b) same encoder, full fine-tuning",
                "metrics": full["metrics"],
                "pretrain_s": pretrain_s,
                "tuning_s": full["tuning_s"],
                "scoring_s": full["scoring_s"],
                "confusion": full["confusion"],
                "details": {k: v for k, v in full.items() if k not in ("metrics", "confusion")},
            },
            {
                "model": "(c) logistic regression baseline",
                "metrics": baseline_entry["metrics"],
                "pretrain_s": None,
                "tuning_s": None,
                "confusion": baseline_entry.get("confusion"),
            },
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(table(result))
    print_paired(paired)
    print(f"wrote {out} ({result['total_s'] / 60:.1f} min)")


def print_paired(paired: list[dict[str, Any]]) -> None:
    """One plain sentence per paired comparison of the eval job (is the gap real on these rows?)."""
    from studio.evaluation.comparison import column_name
    from studio.evaluation.paired import paired_sentence

    for entry in paired:
        print(paired_sentence(entry, column_name(entry["a"]), column_name(entry["b"])))


def rescore(keep: Path, out: Path) -> None:
    """Score a kept run (``--keep DIR``) again with today's eval job: the final and every kept adapter and the
    baseline in ONE job on the test rows, so that each pair gets its paired comparison; written into ``out``
    (the run's JSON) under ``paired`` and ``paired_rescored_with``."""
    from studio.evaluation.comparison import column_name
    from studio.schema import EvalRequest

    env = studio_env(keep.resolve())
    datasets = {d.name: d for d in env.registry.list_datasets()}
    test, train = datasets["lncrna-test"], datasets["lncrna-train"]
    adapters = sorted(env.registry.list_adapters(), key=lambda a: a.id)
    if not adapters:
        raise SystemExit(f"{keep}: no adapter in this run's registry")
    request = EvalRequest(
        adapter_ids=[a.id for a in adapters],
        dataset_id=test.id,
        metrics=["loss", "accuracy"],
        max_examples=100_000,
        include_baseline=True,
        baseline_dataset_id=train.id,
    )
    scored, eval_s = run_job(env, request, "rescore")
    names = {f"adapter:{a.id}": a.name for a in adapters}
    result = json.loads(out.read_text()) if out.exists() else {}
    result["paired"] = scored["paired"]
    result["paired_rescored_with"] = {
        "adapters": names,
        "metrics": {m["key"]: m["metrics"] for m in scored["models"]},
        "scoring_s": eval_s,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    env.registry.dispose()
    for key, name in names.items():
        print(f"{column_name(key)}: {name}")
    print_paired(scored["paired"])
    print(f"wrote paired comparisons into {out}")


if __name__ == "__main__":
    main()
