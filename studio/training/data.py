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


def epoch_steps(n_examples: int, epochs: float, step_size: int) -> int:
    """Optimizer steps that cover ``epochs`` passes over ``n_examples`` at ``step_size`` examples a step (at least 1).

    The one rule for the plan (:meth:`BatchPlan.steps_for`) and the duration estimate.
    """
    return max(1, math.ceil(epochs * n_examples / max(1, step_size)))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A seeded permutation of ``range(n)`` for one epoch (independent of the global RNG)."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def grouped_order(lengths: Sequence[int], group_size: int, seed: int, epoch: int) -> list[int]:
    """A seeded epoch order in which every consecutive ``group_size`` examples have similar lengths.

    The epoch's permutation is cut into mega-batches of ``MEGA_GROUPS`` groups; each is sorted
    by length (longest first, ties in permutation order) and cut into groups; the full groups
    are shuffled with the seed and the one partial group (if any) goes last, so a step never
    straddles two groups except at the end of an epoch. Same (lengths, seed, epoch) -> same order.
    """
    import torch

    n = len(lengths)
    permutation = epoch_order(n, seed, epoch)
    mega = group_size * MEGA_GROUPS
    groups: list[list[int]] = []
    for start in range(0, n, mega):
        chunk = sorted(permutation[start : start + mega], key=lambda i: -lengths[i])
        groups.extend(chunk[j : j + group_size] for j in range(0, len(chunk), group_size))
    tail = groups.pop() if groups and len(groups[-1]) < group_size else None
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_919)
    shuffled = [groups[g] for g in torch.randperm(len(groups), generator=generator).tolist()]
    if tail is not None:
        shuffled.append(tail)
    return [i for group in shuffled for i in group]


MEGA_GROUPS = 64  # groups sorted together: more = less padding, less randomness within an epoch


@dataclass
class BatchPlan:
    """Which examples form each optimizer step and micro-batch: slices of a stream of per-epoch orders.

    Step ``s`` takes the examples at stream positions ``[(s-1)·S, s·S)`` with
    ``S = batch_size × grad_accum``; they are cut into micro-batches of ``micro_batch_size``
    (``batch_size`` unless the memory plan asked for smaller ones: the same examples per
    step, so the effective batch and the data order do not change). With ``micro_tokens``
    (and ``lengths``) a micro-batch instead takes consecutive examples while its padded
    size (rows × longest row) stays within that many tokens, up to ``batch_size`` rows:
    short rows then travel in full micro-batches and only long ones are split. With
    ``lengths`` and ``group``, each epoch's order is length-grouped in units of one step
    (see :func:`grouped_order`). Everything is a pure function of (seed, step): resuming
    needs only the step (and the same micro-batch settings, which checkpoints record).
    """

    n_examples: int
    batch_size: int
    grad_accum: int
    seed: int
    lengths: Sequence[int] | None = None  # tokens per example: grouping and token-budgeted micro-batches
    micro_batch_size: int | None = None
    group: bool = True  # group by length (when lengths are given)
    micro_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.n_examples <= 0:
            raise ValidationFailed("no training examples are left after tokenisation; check the dataset")
        if self.lengths is not None and len(self.lengths) != self.n_examples:
            raise ValueError("lengths must have one entry per example")
        self.micro_batch_size = min(self.micro_batch_size or self.batch_size, self.batch_size)
        self._orders: dict[int, list[int]] = {}

    @property
    def step_size(self) -> int:
        """Examples per optimizer step (the effective batch)."""
        return self.batch_size * self.grad_accum

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            if self.lengths is None or not self.group:
                order = epoch_order(self.n_examples, self.seed, epoch)
            else:
                order = grouped_order(self.lengths, self.step_size, self.seed, epoch)
            self._orders = {epoch: order}
        return self._orders[epoch]

    def _positions(self, start: int, count: int) -> list[int]:
        out = []
        for position in range(start, start + count):
            epoch, offset = divmod(position, self.n_examples)
            out.append(self._order(epoch)[offset])
        return out

    def micro_batch(self, k: int) -> list[int]:
        """Example indices of the k-th batch of ``batch_size`` examples (0-based) of the whole run."""
        return self._positions(k * self.batch_size, self.batch_size)

    def step_examples(self, step: int) -> list[int]:
        """Every example of optimizer step ``step`` (1-based), in stream order."""
        return self._positions((step - 1) * self.step_size, self.step_size)

    def rank_examples(self, step: int, rank: int = 0, world: int = 1) -> list[int]:
        """Rank ``rank``'s share of step ``step``: one contiguous slice of the step's examples.

        The DistributedSampler of the studio's epoch order: the ranks together see exactly the
        step's examples, so the effective batch does not change with the number of processes.
        Contiguous slices (not every world-th example) keep length-grouped rows together.
        """
        examples = self.step_examples(step)
        if world == 1:
            return examples
        n = len(examples)
        return examples[rank * n // world : (rank + 1) * n // world]

    def step_batches(self, step: int, rank: int = 0, world: int = 1) -> list[list[int]]:
        """The micro-batches of optimizer step ``step`` (1-based); of rank ``rank``'s share when ``world`` > 1."""
        examples = self.rank_examples(step, rank, world)
        if self.micro_tokens is None or self.lengths is None:
            size = self.micro_batch_size
            return [examples[i : i + size] for i in range(0, len(examples), size)]
        batches: list[list[int]] = []
        current: list[int] = []
        width = 0
        for i in examples:
            wider = max(width, self.lengths[i])
            if current and (len(current) >= self.batch_size or (len(current) + 1) * wider > self.micro_tokens):
                batches.append(current)
                current, wider = [], self.lengths[i]
            current.append(i)
            width = wider
        batches.append(current)
        return batches

    def steps_for(self, epochs: float) -> int:
        """Optimizer steps needed to cover ``epochs`` passes over the examples."""
        return epoch_steps(self.n_examples, epochs, self.step_size)


def collate(examples: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Pad to the longest row of the batch (right padding): input_ids, attention_mask, labels.

    Classification examples that carry a loss ``weight`` (windows of a sequence) also give ``weight``.
    """
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
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if not token_labels and "weight" in examples[0]:
        # windows of long sequences: each weighted so that every sequence counts once (tokenise.sequence_weights)
        batch["weight"] = torch.tensor([float(e.get("weight", 1.0)) for e in examples], dtype=torch.float32)
    return batch


def pack_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: positions into ``lengths`` grouped so each bin holds at most ``capacity`` tokens."""
    bins: list[list[int]] = []
    fill: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, used in enumerate(fill):
            if used + lengths[i] <= capacity:
                bins[b].append(i)
                fill[b] += lengths[i]
                break
        else:
            bins.append([i])
            fill.append(lengths[i])
    return bins


def best_packing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """The packing with the fewest token slots (sequences × widest sequence) at most ``capacity`` wide.

    Tries every sequence count P: first-fit decreasing at width ``max(longest, ceil(total / P))``.
    """
    longest, total = max(lengths), sum(lengths)
    capacity = max(capacity, longest)
    best: list[list[int]] | None = None
    best_slots = math.inf
    for count in range(1, len(lengths) + 1):
        width = max(longest, math.ceil(total / count))
        if width > capacity:
            continue
        bins = pack_bins(lengths, width)
        slots = len(bins) * max(sum(lengths[i] for i in b) for b in bins)
        if slots < best_slots:
            best, best_slots = bins, slots
    return best if best is not None else pack_bins(lengths, capacity)


def collate_packed(examples: Sequence[dict[str, Any]], pad_id: int, capacity: int, mask_style: str) -> dict[str, Any]:
    """Several rows per sequence, without cross-contamination (causal LM only).

    Rows are packed into sequences of at most ``capacity`` tokens (a longer row gets its
    own), choosing the sequence count with the fewest padded slots (:func:`best_packing`). Every row keeps its own position ids (0, 1, ...) and the first token of
    each row carries no label (it must not be predicted from the previous row). Attention
    is restricted to the row itself by ``mask_style``:

    - ``"bool"`` (sdpa) / ``"additive"`` (eager): a 4D block-diagonal causal mask in
      ``packed_mask`` (shape ``rows × 1 × width × width``); padding attends to itself only;
    - ``"position_ids"`` (flash-attention varlen): no mask, the model splits sequences where
      the position ids restart.

    ``attention_mask`` stays the 2D mask of real tokens (for counting tokens).
    """
    import torch

    lengths = [len(e["input_ids"]) for e in examples]
    bins = best_packing(lengths, capacity)
    width = max(sum(lengths[i] for i in b) for b in bins)
    rows = len(bins)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    labels = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    segments = torch.zeros((rows, width), dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    for row, members in enumerate(bins):
        cursor = 0
        for seg, i in enumerate(members, 1):
            n = lengths[i]
            span = slice(cursor, cursor + n)
            ids[row, span] = torch.tensor(examples[i]["input_ids"], dtype=torch.long)
            row_labels = torch.tensor(examples[i]["labels"], dtype=torch.long)
            row_labels[0] = IGNORE_INDEX
            labels[row, span] = row_labels
            mask[row, span] = 1
            segments[row, span] = seg
            positions[row, span] = torch.arange(n)
            cursor += n
        positions[row, cursor:] = torch.arange(width - cursor)  # padding: its own "row"
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": positions}
    if mask_style != "position_ids":
        batch["packed_mask"] = block_causal_mask(segments, mask_style)
    return batch


def block_causal_mask(segments: Any, style: str) -> Any:
    """4D mask (rows × 1 × width × width): causal within each segment id; padding (0) sees itself only."""
    import torch

    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = segments[:, :, None] == segments[:, None, :]
    real = (segments != 0)[:, None, :]
    allowed = (same & real & causal) | torch.eye(width, dtype=torch.bool)
    allowed = allowed[:, None]
    if style == "bool":
        return allowed
    out = torch.zeros(allowed.shape, dtype=torch.float32)
    return out.masked_fill_(~allowed, torch.finfo(torch.float32).min)


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) for k, v in batch.items()}


def collate_sequences(groups: Sequence[Sequence[dict[str, Any]]], pad_id: int) -> dict[str, Any]:
    """One padded batch of whole sequences, each the list of its windows' examples (pooled window loss).

    Besides :func:`collate`'s tensors it carries ``sequence`` (each row's sequence, 0..n-1 in the
    batch) and ``sequence_labels`` (n), so that the loss and the accuracy pool a sequence's windows
    (:func:`studio.training.losses.loss_sum`); no ``weight``: every sequence counts once by construction.
    """
    import torch

    batch = collate([example for group in groups for example in group], pad_id)
    batch.pop("weight", None)
    batch["sequence"] = torch.tensor([j for j, group in enumerate(groups) for _ in group], dtype=torch.long)
    batch["sequence_labels"] = torch.tensor([group[0]["labels"] for group in groups], dtype=torch.long)
    return batch


def sequence_groups(examples: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Windows grouped by the sequence they come from (examples carry ``sequence``), in first-seen order."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for example in examples:
        groups.setdefault(int(example["sequence"]), []).append(example)
    return list(groups.values())


def eval_batches(
    examples: Sequence[dict[str, Any]], batch_size: int, pad_id: int, pooled: bool = False
) -> Iterator[dict[str, Any]]:
    """Validation examples in their stored order, padded per batch.

    ``pooled`` (a run trained with a pooled window loss): batches of ``batch_size`` whole sequences,
    scored as training scores them, one pooled prediction per sequence (:func:`collate_sequences`).
    """
    if pooled:
        groups = sequence_groups(examples)
        for start in range(0, len(groups), batch_size):
            yield collate_sequences(groups[start : start + batch_size], pad_id)
        return
    for start in range(0, len(examples), batch_size):
        yield collate(examples[start : start + batch_size], pad_id)
