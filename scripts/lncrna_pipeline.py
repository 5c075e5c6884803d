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

    python scripts/lncrna_pipeline.py --data DIR            # the documented run (~25 min on 1 thread, loaded CPU)
    python scripts/lncrna_pipeline.py --data DIR --quick    # a few minutes: smaller encoder, fewer steps
    python scripts/lncrna_pipeline.py --quick               # the in-repo sample (data/samples/lncrna_athaliana)

Writes bench/results/lncrna_pipeline[_quick].json and prints a Markdown table.
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
DEFAULT_DATA = REPO_ROOT / "data" / "samples" / "lncrna_athaliana"
RESULTS_DIR = REPO_ROOT / "bench" / "results"

# (encoder, LoRA, full fine-tuning) settings; "full" is the documented run.
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
        if "loss" in values and step % 100 == 0:
            print(f"[{self.name}] step {step}: loss {values['loss']:.4f}", flush=True)


def studio_env(data_dir: Path) -> Any:
    """Settings, registry, dataset service and a job-context factory on ``data_dir``."""
    from models_db.registry import Registry
    from studio.device import detect_device
    from studio.jobs.context import JobContext
    from studio.services.datasets import DatasetService
    from studio.settings import Settings

    settings = Settings(data_dir=data_dir)
    settings.ensure_dirs()
    registry = Registry.from_url(f"sqlite:///{data_dir}/registry.db")

    class Env:
        datasets = DatasetService(registry, settings)

        def __init__(self) -> None:
            self.settings, self.registry = settings, registry

        def ctx(self, request: Any) -> Any:
            job = registry.create_job(kind=request.kind, request=request.model_dump(mode="json"), schema_version=1)
            return JobContext(
                job_id=job.id, settings=settings, registry=registry, device=detect_device("cpu"), attempt=1
            )

    return Env()


def run_job(env: Any, request: Any, name: str) -> tuple[dict[str, Any], float]:
    from studio.jobs.handlers import get_handler

    began = time.monotonic()
    result = get_handler(request.kind)(request, Reporter(name), env.ctx(request))
    return result, time.monotonic() - began


def full_fine_tune(encoder_dir: Path, train_rows: list, test_rows: list, labels: list, cfg: dict, seed: int) -> dict:
    """(b): every weight of the pre-trained encoder + a new head trained on the windows; scored per sequence."""
    import random

    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup

    from studio.evaluation.classification import classification_report, softmax
    from studio.sequences.windows import pool_logits
    from studio.training.data import collate
    from studio.training.tokenise import encode_rows

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    model = BertForSequenceClassification.from_pretrained(encoder_dir, num_labels=len(labels))
    limit = model.config.max_position_embeddings
    train = encode_rows(train_rows, tokenizer, task="classification", max_length=limit, labels=labels).examples
    test = encode_rows(test_rows, tokenizer, task="classification", max_length=limit, labels=labels).examples
    steps = cfg["max_steps"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"], weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
    rng = random.Random(seed)
    order: list[int] = []
    began = time.monotonic()
    model.train()
    for step in range(steps):
        if len(order) < cfg["batch_size"]:
            fresh = list(range(len(train)))
            rng.shuffle(fresh)
            order += fresh
        chosen, order = order[: cfg["batch_size"]], order[cfg["batch_size"] :]
        batch = collate([train[i] for i in chosen], tokenizer.pad_token_id)
        logits_b = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # the studio's loss: each window weighted 1 / (windows of its sequence), weights averaging 1
        per_row = torch.nn.functional.cross_entropy(logits_b, batch["labels"], reduction="none")
        loss = (per_row * batch["weight"]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step % 100 == 0:
            print(f"[full-ft {time.monotonic() - began:7.1f}s] step {step}/{steps}: loss {loss.item():.4f}", flush=True)
    tuning_s = time.monotonic() - began
    model.eval()
    logits: list[list[float]] = []
    with torch.inference_mode():
        for start in range(0, len(test), 32):
            batch = collate(test[start : start + 32], tokenizer.pad_token_id)
            logits += model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.tolist()
    window_hits = [max(range(len(r)), key=r.__getitem__) == e["labels"] for r, e in zip(logits, test, strict=True)]
    order_ids, pooled = pool_logits(logits, [e["sequence"] for e in test])
    label_of = {e["sequence"]: e["labels"] for e in test}
    expected = [label_of[s] for s in order_ids]
    predicted = pooled.argmax(-1).tolist()
    report = classification_report(expected, softmax(pooled), labels)
    accuracy = sum(p == e for p, e in zip(predicted, expected, strict=True)) / len(expected)
    return {
        "metrics": {"accuracy": accuracy, "window_accuracy": sum(window_hits) / len(window_hits), **report["metrics"]},
        "confusion": report["confusion"],
        "tuning_s": tuning_s,
        "scoring_s": time.monotonic() - began - tuning_s,
        "steps": steps,
        "train_windows": len(train),
        "test_windows": len(test),
        "trainable_parameters": sum(p.numel() for p in model.parameters()),
    }


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
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--quick", action="store_true", help="a small encoder and few steps (minutes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default bench/results/...)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from studio.schema import EvalRequest, PretrainRequest, TrainingHyperParams, TrainRequest

    sizes = SIZES["quick" if args.quick else "full"]
    out = args.out or RESULTS_DIR / f"lncrna_pipeline{'_quick' if args.quick else ''}.json"
    began = time.monotonic()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="lncrna-") as tmp:
        env = studio_env(Path(tmp) / "data")
        mapping = {"text": "sequence", "label": "label"}
        train_ds = env.datasets.add(args.data / "train.jsonl", name="lncrna-train", mapping=mapping)
        test_ds = env.datasets.add(args.data / "test.jsonl", name="lncrna-test", mapping=mapping)

        # (a) pre-train, then LoRA
        pre = sizes["pretrain"]
        pretrain = PretrainRequest(
            dataset_id=train_ds.id,
            name="lnc-bert",
            size="tiny",
            validation_fraction=0.05,
            log_every=20,
            eval_every=pre["max_steps"],
            save_every=100_000,
            seed=args.seed,
            **pre,
        )
        pre_result, pretrain_s = run_job(env, pretrain, "pretrain")
        lora = sizes["lora"]
        train = TrainRequest(
            dataset_id=train_ds.id,
            base_model="lnc-bert",
            task="classification",
            variant="lora",
            seed=args.seed,
            variant_params={"r": lora["rank"], "lora_alpha": 2 * lora["rank"]},
            hyper=TrainingHyperParams(
                max_steps=lora["max_steps"],
                batch_size=lora["batch_size"],
                learning_rate=lora["learning_rate"],
                validation_fraction=0.05,
                eval_every=100_000,
                log_every=20,
                save_every=100_000,
            ),
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
        "threads": args.threads,
        "load_average_at_start": [round(x, 2) for x in load],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "total_s": time.monotonic() - began,
        "sizes": sizes,
        "pretrain": {k: v for k, v in pre_result.items() if isinstance(v, int | float | str | dict | list)},
        "lora_train": {k: v for k, v in train_result.items() if isinstance(v, int | float | str)},
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
    print(f"wrote {out} ({result['total_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
