"""Can an encoder architecture learn "a start codon, then no stop codon for N codons" (a positional rule)?

Why this exists: on the lncRNA data the windowed BERT encoder stopped at what a window's stop codons
tell (``scripts/lncrna_window_ceilings.py``: 0.89-0.91), while the ORF that starts at an ATG, which the
baseline reads, would give 0.947 inside a 256-codon window. Learning it needs positions: which ATG
comes after which stop. This probe measures that alone, on synthetic codon windows, for the encoder
architectures the ``pretrain`` job can build (:func:`studio.sequences.pretrain.build_encoder`).

Every window is ``length`` random codons with one stop-free stretch of ``length/4``-``length/2``
codons between two stop codons. In a positive window the stretch starts with ATG (an ORF as long as
the stretch); in a negative one the same stretch holds an ATG 3-10 codons before its end (a short
ORF). Both classes hold the same stretch, the same codons and about the same number of ATGs, so
only where the ATG sits relative to the stops separates them. The encoders are trained from
scratch as classifiers (mean of the token states, or ``--pooling attention`` -> a linear head), the same steps, batch and rate
each; test accuracy on 512 fresh windows is reported every ``--every`` steps.

    python scripts/positional_rule_probe.py                         # bert and roformer, 128 codons, 1,500 steps (~9 min)
    python scripts/positional_rule_probe.py --arch roformer --steps 300 --length 64   # a quick look
    python scripts/positional_rule_probe.py --arch roformer --layers 2 --layers 4 --steps 600 \
        --out bench/results/positional_rule_probe_depth.json                      # depth: 2 against 4 layers
    python scripts/positional_rule_probe.py --arch roformer --pooling mean --pooling attention --steps 1000 \
        --out bench/results/positional_rule_probe_pooling.json                    # mean against attention pooling
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.schema import ENCODER_ARCHITECTURES  # noqa: E402

BASES = "ACGT"
CODONS = [a + b + c for a in BASES for b in BASES for c in BASES]
STOPS = ("TAA", "TAG", "TGA")
START = "ATG"
STRETCH_CODONS = [c for c in CODONS if c not in STOPS and c != START]


def planted_window(label: int, length: int, rng: random.Random) -> tuple[list[str], int, int, int]:
    """(codons, stretch start, stretch end, the stretch's ATG) of a window of class ``label`` (see the module doc)."""
    codons = [rng.choice(CODONS) for _ in range(length)]
    stretch = rng.randint(length // 4, length // 2)
    start = rng.randint(1, length - stretch - 2)
    codons[start - 1] = rng.choice(STOPS)
    for i in range(start, start + stretch):
        codons[i] = rng.choice(STRETCH_CODONS)
    codons[start + stretch] = rng.choice(STOPS)
    atg = start if label else start + stretch - rng.randint(3, 10)
    codons[atg] = START
    return codons, start, start + stretch, atg


def make_window(label: int, length: int, rng: random.Random) -> list[str]:
    """``length`` codons with one stop-free stretch; it starts with ATG when ``label`` is 1 (see the module doc)."""
    return planted_window(label, length, rng)[0]


def longest_atg_orf(codons: Sequence[str]) -> int:
    """Codons from an ATG to the next stop (or the end), the longest over the window's ATGs."""
    best, open_at = 0, None
    for i, codon in enumerate(codons):
        if codon in STOPS:
            if open_at is not None:
                best = max(best, i - open_at)
            open_at = None
        elif codon == START and open_at is None:
            open_at = i
    if open_at is not None:
        best = max(best, len(codons) - open_at)
    return best


def batch(size: int, length: int, rng: random.Random, vocab: dict[str, int], cls: int, sep: int) -> tuple[Any, Any]:
    """(input_ids [size, length + 2], labels [size]) of fresh windows, half of each class on average."""
    import torch

    labels = [rng.randint(0, 1) for _ in range(size)]
    ids = [[cls, *(vocab[c] for c in make_window(y, length, rng)), sep] for y in labels]
    return torch.tensor(ids), torch.tensor(labels)


def train_probe(
    architecture: str,
    length: int,
    steps: int,
    seed: int = 0,
    every: int = 100,
    batch_size: int = 32,
    lr: float = 2e-3,
    layers: int = 2,
    pooling: str = "mean",
) -> dict[str, Any]:
    """Train a tiny encoder of ``architecture`` (hidden 64, ``layers`` layers, 4 heads) on the rule; its accuracy curve.

    ``pooling`` is how the window's token states reach the linear head: their ``mean``, or the
    studio's learnt ``attention`` pooling (:func:`studio.sequences.pooling.attention_pooler`).
    """
    import torch

    from studio.sequences.pooling import attention_pooler, pool_tokens
    from studio.sequences.pretrain import build_encoder
    from studio.sequences.tokenizers import build_tokenizer

    tokenizer = build_tokenizer("codon", 1, model_max_length=length + 2)
    vocab = {c: tokenizer.convert_tokens_to_ids(c) for c in CODONS}
    encoder = build_encoder(tokenizer, 64, layers, 4, length + 2, seed, "mean", architecture).base_model
    head = torch.nn.Linear(64, 2)
    pooler = attention_pooler(64) if pooling == "attention" else None
    trained = [*encoder.parameters(), *head.parameters(), *(pooler.parameters() if pooler is not None else [])]
    optimizer = torch.optim.AdamW(trained, lr=lr)
    rng = random.Random(seed)
    test_x, test_y = batch(
        512, length, random.Random(seed + 10_000), vocab, tokenizer.cls_token_id, tokenizer.sep_token_id
    )

    def logits(x: Any) -> Any:
        mask = torch.ones_like(x)
        states = encoder(input_ids=x, attention_mask=mask).last_hidden_state
        return head(pooler(states, mask) if pooler is not None else pool_tokens(states, mask, "mean"))

    curve, began = [], time.monotonic()
    encoder.train()
    for step in range(1, steps + 1):
        x, y = batch(batch_size, length, rng, vocab, tokenizer.cls_token_id, tokenizer.sep_token_id)
        loss = torch.nn.functional.cross_entropy(logits(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == steps:
            encoder.eval()
            with torch.inference_mode():
                accuracy = float((logits(test_x).argmax(-1) == test_y).float().mean())
            encoder.train()
            curve.append({"step": step, "loss": float(loss.detach()), "test_accuracy": accuracy})
            print(
                f"[{architecture}, {layers} layers, {pooling}] step {step}/{steps}: loss {float(loss.detach()):.3f}, test accuracy {accuracy:.3f}",
                flush=True,
            )
    return {
        "architecture": architecture,
        "layers": layers,
        "pooling": pooling,
        "curve": curve,
        "final_accuracy": curve[-1]["test_accuracy"],
        "best_accuracy": max(p["test_accuracy"] for p in curve),
        "seconds": time.monotonic() - began,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arch", action="append", choices=ENCODER_ARCHITECTURES, help="repeat for several (default: all)"
    )
    parser.add_argument("--length", type=int, default=128, help="codons a window")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument(
        "--layers", type=int, action="append", help="encoder depth; repeat for several (default: 2, the recipes' depth)"
    )
    parser.add_argument(
        "--pooling",
        action="append",
        choices=("mean", "attention"),
        help="how token states reach the head; repeat for several (default: mean)",
    )
    parser.add_argument("--every", type=int, default=100, help="test accuracy every N steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "positional_rule_probe.json")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    began = time.monotonic()
    runs = [
        train_probe(a, args.length, args.steps, args.seed, args.every, layers=n, pooling=p)
        for a in args.arch or ENCODER_ARCHITECTURES
        for n in args.layers or [2]
        for p in args.pooling or ["mean"]
    ]
    result = {
        "command": "python scripts/positional_rule_probe.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "length": args.length,
        "steps": args.steps,
        "seed": args.seed,
        "threads": args.threads,
        "runs": runs,
        "seconds": time.monotonic() - began,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for run in runs:
        print(
            f"{run['architecture']}, {run['layers']} layers, {run['pooling']} pooling: test accuracy {run['final_accuracy']:.3f} (best {run['best_accuracy']:.3f})"
        )
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
