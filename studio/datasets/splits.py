"""Seeded train/validation split: the one function training uses to hold rows out.

Pure and deterministic: the same (n_rows, fraction, seed) always gives the same
indices, on every machine and Python version (``random.Random`` with an int seed
is stable), so a job can be re-run or resumed and see the same validation set.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from studio.errors import ValidationFailed

T = TypeVar("T")


def split_rows(n_rows: int, validation_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split row indices ``0..n_rows-1`` into (train_indices, val_indices), each sorted.

    The validation set is ``round(n_rows * validation_fraction)`` rows of a
    ``random.Random(seed)`` permutation, but at least 1 when the fraction is above 0
    and there are at least 2 rows, and never so many that no training row is left.
    """
    if n_rows < 0:
        raise ValidationFailed(f"cannot split {n_rows} rows")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValidationFailed(f"validation fraction {validation_fraction} must be at least 0 and below 1")
    order = list(range(n_rows))
    random.Random(seed).shuffle(order)
    # A single row cannot be split: it trains.
    n_val = round(n_rows * validation_fraction) if n_rows >= 2 else 0
    if validation_fraction > 0 and n_rows >= 2:
        n_val = min(max(n_val, 1), n_rows - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])


def split_list(rows: Sequence[T], validation_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Apply :func:`split_rows` to a list of rows; returns (train_rows, validation_rows)."""
    train, val = split_rows(len(rows), validation_fraction, seed)
    return [rows[i] for i in train], [rows[i] for i in val]
