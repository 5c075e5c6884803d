"""Training speed and memory: the studio's training function against a plain PEFT loop.

Both train SmolLM2-135M-Instruct (the bundled model) with a rank-8 LoRA on every attention
and MLP linear, AdamW (lr 2e-4, 3 % warmup, linear decay, clip 1.0), one epoch over the same
first ``--rows`` rows of the Alpaca sample in /work/shared/data/alpaca, 8 rows per step,
then are scored on the next ``--val-rows`` rows (held out) the same way: fp32, eval mode,
mean cross-entropy over the response tokens.

- reference: fp32, batches of 8 rows in file order padded to the longest row, full logits
  (``model(..., labels=...)``), no gradient checkpointing;
- studio: ``run_training`` with a MemoryReporter and the defaults (precision auto, length
  grouping, auto checkpointing from the memory estimate, chunked loss).

Each runs in its own subprocess; its peak RSS is the ``ru_maxrss`` that ``os.wait4`` reports
for that child. With ``--device cuda`` both train on the GPU and the memory compared is the
peak of ``torch.cuda.max_memory_allocated`` (tensors on the GPU; RSS is recorded too). Real tokens are non-pad tokens; tokens/s counts only the training steps
(not loading or scoring). Targets: >= 2.0x real tokens/s, <= 0.4x peak RSS, validation loss
within 2 % of the reference's.

    python bench/train_speed.py [--rows 120] [--val-rows 40] [--out bench/results/train_speed.json]

The machine is shared: the 1-minute load average before and after each run is recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# --data (or STUDIO_SHARED_DATA): one folder per data set; default the samples shipped in data/samples.
DATA = Path(os.environ.get("STUDIO_SHARED_DATA") or REPO / "data" / "samples")
ALPACA = DATA / "alpaca" / "train.jsonl"
BASE = "smollm2-135m-instruct"
SEED = 42
BATCH = 8
MAX_LENGTH = 512
LR = 2e-4
WARMUP = 0.03
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GIB = 1024**3
THREADS = 0  # torch threads in the children (0 = torch's default)
DEVICE = "cpu"  # "cuda": both children train on the GPU


# -- data and scoring shared by both children ------------------------------------------------------


def prepare_data(rows: int, val_rows: int, work: Path) -> tuple[Path, Path]:
    """The first ``rows`` Alpaca rows (train) and the next ``val_rows`` (held out), as canonical chat JSONL."""
    from studio.datasets.normalise import to_canonical, write_jsonl

    raw = []
    with open(ALPACA, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                raw.append(json.loads(line))
            if len(raw) == rows + val_rows:
                break
    canonical = [to_canonical("alpaca", row) for row in raw]
    train, val = work / "train.jsonl", work / "val.jsonl"
    write_jsonl(canonical[:rows], train)
    write_jsonl(canonical[rows:], val)
    return train, val


def encode(path: Path, tokenizer: Any) -> list[dict[str, Any]]:
    from studio.training.data import read_jsonl
    from studio.training.tokenise import encode_rows

    return encode_rows(read_jsonl(path), tokenizer, task="causal-lm", max_length=MAX_LENGTH).examples


def validation_loss(model: Any, tokenizer: Any, val_path: Path, device: Any = "cpu") -> float:
    """Mean response-token cross-entropy on the held-out rows: fp32, eval mode, no autocast.

    Scored with the chunked loss for both sides (equal to the full-logits loss to 1e-5, see
    tests/training/test_chunked_loss.py) so that scoring adds no logits peak to either RSS.
    """
    from studio.training.data import eval_batches
    from studio.training.losses import LossFunction, evaluate

    examples = encode(val_path, tokenizer)
    batches = [{k: v.to(device) for k, v in b.items()} for b in eval_batches(examples, BATCH, tokenizer.pad_token_id)]
    return evaluate(model, batches, "causal-lm", loss_fn=LossFunction.for_model(model, "causal-lm", 1024)).loss


# -- the two children --------------------------------------------------------------------------------


def run_reference(base: Path, train_path: Path, val_path: Path, device: str = "cpu") -> dict[str, Any]:
    """A plain PEFT loop: fp32, file order, padded batches, HF loss on full logits, no checkpointing."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from studio.training.data import collate
    from studio.training.models import load_tokenizer_for
    from studio.variants.base import lr_lambda

    tokenizer = load_tokenizer_for(base)
    examples = encode(train_path, tokenizer)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).to(device)
    torch.manual_seed(SEED)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    steps = math.ceil(len(examples) / BATCH)
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps, math.ceil(WARMUP * steps), "linear"))
    real = padded = 0
    losses = []
    start, start_cpu = time.monotonic(), time.process_time()
    for step in range(steps):
        batch = collate(examples[step * BATCH : (step + 1) * BATCH], tokenizer.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        real += int(batch["attention_mask"].sum())
        padded += int(batch["input_ids"].numel())
    seconds, cpu = time.monotonic() - start, time.process_time() - start_cpu
    return {
        "steps": steps,
        "train_seconds": seconds,
        "train_cpu_seconds": cpu,
        "real_tokens_per_cpu_s": real / cpu,
        "real_tokens": real,
        "padded_tokens": padded,
        "real_tokens_per_s": real / seconds,
        "train_losses": losses,
        "val_loss": validation_loss(model, tokenizer, val_path, device),
        "setup": "fp32, file order, padded batches, full logits, no checkpointing",
        "device": device,
    }


def run_studio(
    base: Path, train_path: Path, val_path: Path, work: Path, overrides: dict[str, Any], device: str = "cpu"
) -> dict[str, Any]:
    """``run_training`` with a MemoryReporter and the default speed settings."""
    from studio.device import detect_device
    from studio.progress import MemoryReporter
    from studio.schema import TrainingHyperParams, TrainRequest
    from studio.settings import load_settings
    from studio.training.loop import run_training
    from studio.training.setup import TrainingData

    hyper = TrainingHyperParams(
        **overrides,
        learning_rate=LR,
        epochs=1.0,
        batch_size=BATCH,
        max_length=MAX_LENGTH,
        warmup_ratio=WARMUP,
        validation_fraction=0.0,  # the held-out rows are scored separately, like the reference's
        eval_every=100_000,
        save_every=100_000,
    )
    request = TrainRequest(dataset_id=1, base_model=BASE, variant="lora", hyper=hyper, seed=SEED)
    reporter = MemoryReporter()
    result = run_training(
        request,
        reporter,
        settings=load_settings(),
        device=detect_device(device),
        work_dir=work / "studio-run",
        dataset=TrainingData(path=train_path, sha256="bench"),
        base_path=base,
    )
    return {
        "steps": result.total_steps,
        "train_seconds": result.train_seconds,
        "train_cpu_seconds": result.train_cpu_seconds,
        "real_tokens_per_cpu_s": result.real_tokens / result.train_cpu_seconds,
        "real_tokens": result.real_tokens,
        "padded_tokens": result.padded_tokens,
        "real_tokens_per_s": result.real_tokens / result.train_seconds,
        "train_losses": [result.losses[s] for s in sorted(result.losses)],
        "val_loss": validation_loss(result.model, result.tokenizer, val_path, device),
        "setup": result.training_setup(hyper),
        "device": device,
        "log": [message for _, message in reporter.logs],
    }


def child_main(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(int(args.threads))
    torch.manual_seed(SEED)
    base, train, val, work = Path(args.base), Path(args.train), Path(args.val), Path(args.work)
    overrides = json.loads(args.studio_json or "{}")
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = (
        run_reference(base, train, val, args.device)
        if args.child == "reference"
        else run_studio(base, train, val, work, overrides, args.device)
    )
    out["torch_threads"] = torch.get_num_threads()
    if args.device == "cuda":
        out["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        out["peak_gpu_reserved_bytes"] = torch.cuda.max_memory_reserved()
    Path(args.result).write_text(json.dumps(out, indent=2, default=str))


# -- the parent ---------------------------------------------------------------------------------------


def run_child(kind: str, base: Path, train: Path, val: Path, work: Path, overrides: dict | None = None) -> dict:
    result_file = work / f"{kind}.json"
    command = [sys.executable, __file__, "--child", kind, "--base", str(base), "--train", str(train)]
    command += ["--val", str(val), "--work", str(work), "--result", str(result_file)]
    command += ["--studio-json", json.dumps(overrides or {}), "--device", DEVICE]
    if THREADS:
        command += ["--threads", str(THREADS)]
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"the {kind} run failed (exit {process.returncode})")
    out = json.loads(result_file.read_text())
    out["peak_rss_bytes"] = usage.ru_maxrss * 1024  # Linux reports KiB
    out["process_user_s"], out["process_system_s"] = usage.ru_utime, usage.ru_stime  # whole child
    out["wall_seconds"] = time.monotonic() - started
    out["load_before"], out["load_after"] = load_before, os.getloadavg()[0]
    return out


def machine() -> dict[str, Any]:
    import torch

    from studio.device import detect_device

    device = detect_device("cpu")
    out = {
        "cpu": device.name,
        "cores": os.cpu_count(),
        "memory_gib": round((device.memory_bytes or 0) / GIB, 1),
        "bf16": device.bf16,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if DEVICE == "cuda":
        gpu = detect_device("cuda")
        out.update(gpu=gpu.name, gpu_memory_gib=round((gpu.memory_bytes or 0) / GIB, 1), gpu_bf16=gpu.bf16)
    return out


def peak_memory(run: dict[str, Any]) -> int:
    """The memory the comparison is about: GPU tensors on a GPU, the process's RSS on a CPU."""
    return run["peak_gpu_bytes"] if DEVICE == "cuda" else run["peak_rss_bytes"]


def table(reference: dict[str, Any], studio: dict[str, Any], ratios: dict[str, float], met: dict[str, bool]) -> str:
    def ok(key: str) -> str:
        return "yes" if met[key] else "NO"

    rows = [
        ("", "reference", "studio", "ratio", "target", "met"),
        (
            "real tokens/s",
            f"{reference['real_tokens_per_s']:.1f}",
            f"{studio['real_tokens_per_s']:.1f}",
            f"{ratios['tokens_per_s']:.2f}x",
            ">= 2.0x",
            ok("tokens_per_s"),
        ),
        (
            "peak GPU memory" if DEVICE == "cuda" else "peak RSS",
            f"{peak_memory(reference) / GIB:.2f} GiB",
            f"{peak_memory(studio) / GIB:.2f} GiB",
            f"{ratios['peak_rss']:.2f}x",
            "<= 0.4x",
            ok("peak_rss"),
        ),
        (
            "val loss",
            f"{reference['val_loss']:.4f}",
            f"{studio['val_loss']:.4f}",
            f"{ratios['val_loss_change']:+.2%}",
            "within 2%",
            ok("val_loss"),
        ),
        (
            "real tokens/CPU-s",
            f"{reference['real_tokens_per_cpu_s']:.1f}",
            f"{studio['real_tokens_per_cpu_s']:.1f}",
            f"{ratios['tokens_per_cpu_s']:.2f}x",
            "(load-robust)",
            "",
        ),
        ("train seconds", f"{reference['train_seconds']:.0f}", f"{studio['train_seconds']:.0f}", "", "", ""),
        (
            "padding",
            f"{1 - reference['real_tokens'] / reference['padded_tokens']:.0%}",
            f"{1 - studio['real_tokens'] / studio['padded_tokens']:.0%}",
            "",
            "",
            "",
        ),
        (
            "load (1 min)",
            f"{reference['load_before']:.2f}->{reference['load_after']:.2f}",
            f"{studio['load_before']:.2f}->{studio['load_after']:.2f}",
            "",
            "",
            "",
        ),
    ]
    widths = [max(len(str(r[i])) for r in rows) for i in range(6)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=120, help="training rows (default 120)")
    parser.add_argument("--data", type=Path, default=DATA, help=f"folder of the data sets (default {DATA})")
    parser.add_argument("--val-rows", type=int, default=40, help="held-out rows scored after training")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "train_speed.json"))
    parser.add_argument("--child", choices=["reference", "studio"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads in both runs (default: torch's, one per core)"
    )
    parser.add_argument(
        "--studio-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a studio training setting (e.g. gradient_checkpointing=on); the defaults are the point",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where both runs train")
    for name in ("base", "train", "val", "work", "result", "studio-json"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global ALPACA
    ALPACA = args.data / "alpaca" / "train.jsonl"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        child_main(args)
        return
    os.environ.setdefault("STUDIO_MODELS_DIR", "/tmp/studio-models")  # one converted copy for all benches
    from studio.models.base_models import resolve_base_model
    from studio.settings import load_settings

    global THREADS, DEVICE
    THREADS, DEVICE = args.threads, args.device
    overrides = {}
    for pair in args.studio_set:
        key, _, raw = pair.partition("=")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    base = resolve_base_model(BASE, load_settings(), progress=print).path
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        work = Path(tmp)
        train, val = prepare_data(args.rows, args.val_rows, work)
        print(f"{args.rows} training rows, {args.val_rows} held out; base {base}; load {os.getloadavg()[0]:.2f}")
        reference = run_child("reference", base, train, val, work)
        print(f"reference: {reference['real_tokens_per_s']:.1f} real tokens/s")
        studio = run_child("studio", base, train, val, work, overrides)
        print(f"studio:    {studio['real_tokens_per_s']:.1f} real tokens/s")
    ratios = {
        "tokens_per_s": studio["real_tokens_per_s"] / reference["real_tokens_per_s"],
        "tokens_per_cpu_s": studio["real_tokens_per_cpu_s"] / reference["real_tokens_per_cpu_s"],
        "peak_rss": peak_memory(studio) / peak_memory(reference),  # GPU memory with --device cuda
        "val_loss_change": studio["val_loss"] / reference["val_loss"] - 1,
    }
    met = {
        "tokens_per_s": ratios["tokens_per_s"] >= 2.0,
        "peak_rss": ratios["peak_rss"] <= 0.4,
        "val_loss": abs(ratios["val_loss_change"]) <= 0.02,
    }
    print()
    print(table(reference, studio, ratios, met))
    report = {
        "config": {
            "base_model": BASE,
            "rows": args.rows,
            "val_rows": args.val_rows,
            "batch_size": BATCH,
            "max_length": MAX_LENGTH,
            "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "targets": TARGETS},
            "learning_rate": LR,
            "seed": SEED,
            "studio_overrides": overrides,
            "threads": THREADS or "default",
            "device": DEVICE,
        },
        "machine": machine(),
        "reference": reference,
        "studio": studio,
        "ratios": ratios,
        "targets": {"tokens_per_s": ">= 2.0", "peak_rss": "<= 0.4", "val_loss": "within 2%"},
        "targets_met": met,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
