"""One training job over 2 processes against 1 process on this machine (gloo on the CPU).

Trains the same request (a small random Llama built from a config, plain LoRA, fp32, no dropout)
alone and in a group of 2 ranks (each rank gets half the host's threads), and reports real
tokens per second of the optimizer steps and the all-reduce share of the step time. The losses
of the two runs are compared too (the distributed run must reproduce them).

    python bench/distributed.py [--steps 12] [--hidden 256] [--layers 4]

Writes bench/results/distributed.json. On a CPU the ranks share the same cores: what this
measures is mostly the overhead (start-up, gradient all-reduce) and how well 1 thread per rank
uses the cores against 1 process with all threads (on a busy shared box OpenMP threads wait on
each other, so the 2-rank run can come out ahead). The speed-up case (one GPU per rank) needs a
GPU host; see docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' tiny word tokenizer

from bench.common import RESULTS_DIR, machine_info  # noqa: E402


def build_base(path: Path, hidden: int, layers: int) -> Path:
    """A random Llama of ``hidden`` × ``layers`` with the tests' word-level tokenizer (no download)."""
    import torch
    from conftest_training import make_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default=str(RESULTS_DIR / "distributed.json"))
    args = parser.parse_args()

    from studio.schema import TrainingHyperParams, TrainRequest
    from studio.training.distributed import run_training_for_group, train_in_group
    from studio.training.setup import TrainingData

    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = build_base(root / "base", args.hidden, args.layers)
        from conftest_training import chat_rows, write_jsonl

        data = TrainingData(path=write_jsonl(root / "chat.jsonl", chat_rows(64)), sha256="bench", name="chat")
        hyper = TrainingHyperParams(
            max_steps=args.steps,
            batch_size=args.batch_size,
            validation_fraction=0.0,
            precision="fp32",
            warmup_ratio=0.0,
            log_every=1000,
            eval_every=100_000,
            save_every=100_000,
            learning_rate=1e-3,
        )
        request = TrainRequest(dataset_id=1, base_model="bench", variant_params={"lora_dropout": 0.0}, hyper=hyper)
        import torch

        torch.set_num_threads(threads)
        began = time.monotonic()
        one = run_training_for_group(request, data, base, root / "one", None)
        one_wall = time.monotonic() - began
        began = time.monotonic()
        two = train_in_group([request], data, base, root / "two", world=2, threads=max(1, threads // 2))[0]
        two_wall = time.monotonic() - began
    diff = max(abs(one["losses"][s] - two["losses"][s]) for s in one["losses"])
    rows = {}
    for name, run, wall in (("1 process", one, one_wall), ("2 processes", two, two_wall)):
        rows[name] = {
            "tokens_per_s": run["real_tokens"] / run["train_seconds"],
            "train_s": run["train_seconds"],
            "allreduce_s": run["allreduce_seconds"],
            "allreduce_share": run["allreduce_seconds"] / run["train_seconds"],
            "wall_s_with_startup": wall,
        }
    out = {
        "device": "cpu (gloo)",
        "machine": machine_info(),
        "model": {"hidden": args.hidden, "layers": args.layers, "variant": "lora r=8"},
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads_total": threads,
        "max_loss_difference": diff,
        "runs": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out["runs"], indent=2), f"\nmax |loss difference| {diff:.2e}")


if __name__ == "__main__":
    main()
