"""Rows in, deterministic micro-batches out.

The order of examples is a pure function of (seed, epoch), and micro-batch ``k``
of the run is a pure function of ``k``. Resuming at optimizer step ``s`` therefore
only needs ``s``: no sampler state to save, and a resumed run sees exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import ValidationFailed
from studio.training.tokenise import IGNORE_INDEX


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The canonical dataset file: one JSON object per line (blank lines ignored)."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValidationFailed(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
    return rows


def split_indices(n_rows: int, validation_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) row indices; the datasets package's seeded split."""
    from studio.datasets.splits import split_rows

    return split_rows(n_rows, validation_fraction, seed)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A seeded permutation of ``range(n)`` for one epoch (independent of the global RNG)."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


@dataclass
class BatchPlan:
    """Which examples form micro-batch ``k``: consecutive slices of a stream of per-epoch permutations."""

    n_examples: int
    batch_size: int
    grad_accum: int
    seed: int

    def __post_init__(self) -> None:
        if self.n_examples <= 0:
            raise ValidationFailed("no training examples are left after tokenisation; check the dataset")
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            self._orders = {epoch: epoch_order(self.n_examples, self.seed, epoch)}
        return self._orders[epoch]

    def micro_batch(self, k: int) -> list[int]:
        """Example indices of the k-th micro-batch (0-based) of the whole run."""
        start = k * self.batch_size
        out = []
        for position in range(start, start + self.batch_size):
            epoch, offset = divmod(position, self.n_examples)
            out.append(self._order(epoch)[offset])
        return out

    def step_batches(self, step: int) -> list[list[int]]:
        """The micro-batches of optimizer step ``step`` (1-based)."""
        first = (step - 1) * self.grad_accum
        return [self.micro_batch(k) for k in range(first, first + self.grad_accum)]

    def steps_for(self, epochs: float) -> int:
        """Optimizer steps needed to cover ``epochs`` passes over the examples."""
        per_step = self.batch_size * self.grad_accum
        return max(1, math.ceil(epochs * self.n_examples / per_step))


def collate(examples: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Pad to the longest row of the batch (right padding): input_ids, attention_mask, labels."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    token_labels = isinstance(examples[0]["labels"], list)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long) if token_labels else None
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        ids[row, :n] = torch.tensor(example["input_ids"], dtype=torch.long)
        mask[row, :n] = 1
        if token_labels:
            labels[row, :n] = torch.tensor(example["labels"], dtype=torch.long)
    if not token_labels:
        labels = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) for k, v in batch.items()}


def eval_batches(examples: Sequence[dict[str, Any]], batch_size: int, pad_id: int) -> Iterator[dict[str, Any]]:
    """Validation examples in their stored order, padded per batch."""
    for start in range(0, len(examples), batch_size):
        yield collate(examples[start : start + batch_size], pad_id)
