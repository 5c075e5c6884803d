"""A tiny 3-mer sequence encoder and random DNA rows, for tests of windowed sequence runs.

Every row is longer than the encoder's window, so the loop cuts it into several full windows of
:data:`WINDOW` tokens (the request's max_length, 64, is lowered to the encoder's).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from conftest_training import make_request

WINDOW = 34  # the encoder's positions: [CLS] + 32 3-mers + [SEP]
ROWS = 16  # a multiple of BATCH: every shuffled batch of the estimate is full
BATCH = 4


def make_kmer_encoder(out: Path) -> Path:
    """Save a tiny BERT encoder with a 3-mer tokenizer in ``out``, as the pre-training job leaves one."""
    from studio.sequences.pretrain import build_encoder
    from studio.sequences.tokenizers import build_tokenizer

    tokenizer = build_tokenizer("kmer", 3, model_max_length=WINDOW)
    model = build_encoder(tokenizer, 16, 1, 2, WINDOW, seed=0, pooling="mean")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def dna_rows(n: int = ROWS, seed: int = 0) -> list[dict]:
    """``n`` labelled random DNA rows of 100-300 nt: each longer than a window, so 5-18 windows."""
    rng = random.Random(seed)
    return [
        {"text": "".join(rng.choice("ACGT") for _ in range(rng.randint(100, 300))), "label": i % 2} for i in range(n)
    ]


def windows_per_sequence(rows: list[dict], encoder_dir: Path) -> list[int]:
    """How many windows the loop cuts from each row (tokenised directly, at the encoder's window)."""
    from studio.training.models import load_tokenizer_for
    from studio.training.tokenise import encode_rows

    encoded = encode_rows(
        rows, load_tokenizer_for(encoder_dir), task="classification", max_length=WINDOW, labels=[0, 1]
    )
    assert {len(e["input_ids"]) for e in encoded.examples} == {WINDOW}  # every window full: no padding differences
    counts = Counter(e["sequence"] for e in encoded.examples)
    return [counts[i] for i in range(len(rows))]


def window_request(encoder_dir: Path, window_loss: str, **hyper):
    """A classification request on ``encoder_dir`` (batch :data:`BATCH`, 5 steps, fp32) with ``window_loss``."""
    settings = dict(batch_size=BATCH, max_steps=5, precision="fp32", window_loss=window_loss)
    request = make_request("lora", task="classification", **{**settings, **hyper})
    return request.model_copy(update={"base_model": str(encoder_dir)})
