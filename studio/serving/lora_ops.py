"""Batched LoRA compute: every row of a batch adds its own adapter's low-rank term (or none).

``y_i = W0 x_i + s_a B_a A_a x_i`` for row i using adapter a (slot 0: no term).
The base layer runs once for the whole batch; :class:`LoRALinear` wraps an
``nn.Linear`` of the base model (no PEFT involved) and adds the per-row term
from its :class:`~studio.serving.bank.LayerBank`, reading the slot index of every
row from a :class:`LoRAContext` that the engine sets around each forward.

Two ways to compute the term (composition spec §8):

- **gather-BMM** (decode: one token per row): gather each row's zero-padded
  ``A``/``B`` by slot index and run two batched matmuls. One kernel whatever the
  mix of adapters; the padding to ``r_max`` costs little when each row brings one
  token.
- **segments** (prefill: many tokens per row): rows stably sorted by slot, one
  pair of matmuls per adapter at its true rank, results added back with
  ``index_add_``. Long prompts do not pay for the padding, and a batch that is
  all one adapter is a single matmul pair.

``auto`` dispatches on the tokens each row brings. Attention and the KV cache are
the base model's own: nothing here touches them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from studio.serving.bank import AdapterBank, LayerBank

Strategy = Literal["auto", "gather", "segments"]
# Rows bringing at most this many tokens go through gather-BMM under "auto": a decode step brings 1.
GATHER_MAX_TOKENS_PER_ROW = 1


class LoRAContext:
    """The current forward's slot per row, with the per-adapter segments worked out once for all layers."""

    def __init__(self) -> None:
        self.slots: torch.Tensor | None = None  # [batch] long; None: no LoRA at all
        self.strategy: Strategy = "auto"
        self.segments: list[tuple[int, torch.Tensor]] = []  # (slot, rows using it), slot 0 left out

    @contextmanager
    def use(self, slots: torch.Tensor | list[int], strategy: Strategy = "auto", device: torch.device | None = None):
        """Make every wrapped layer use ``slots`` (one per batch row) for the forwards inside the block.

        ``device``: where the bank lives; the indices are moved there once here, not once per layer.
        """
        slots = torch.as_tensor(slots, dtype=torch.long, device=device)
        previous = self.slots, self.strategy, self.segments
        if bool((slots != 0).any()):
            order = torch.argsort(slots, stable=True)
            values, counts = torch.unique_consecutive(slots[order], return_counts=True)
            rows = torch.split(order, counts.tolist())
            self.segments = [(int(v), r) for v, r in zip(values.tolist(), rows, strict=True) if v]
            self.slots = slots
        else:  # base rows only: the wrapped layers are plain linears for this forward
            self.slots, self.segments = None, []
        self.strategy = strategy
        try:
            yield self
        finally:
            self.slots, self.strategy, self.segments = previous


def gather_bmm_delta(x: torch.Tensor, bank: LayerBank, slots: torch.Tensor) -> torch.Tensor:
    """The LoRA term of every row ``[batch, tokens, d_out]`` from each row's gathered, zero-padded A and B."""
    z = torch.bmm(x, bank.A[slots].mT)  # [batch, tokens, r_max]
    y = torch.bmm(z, bank.B[slots].mT)  # [batch, tokens, d_out]
    return y * bank.scale[slots].view(-1, 1, 1)


def segmented_delta(x: torch.Tensor, bank: LayerBank, segments: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """The LoRA term with one matmul pair per adapter at its true rank, scattered back to its rows."""
    out = torch.zeros(*x.shape[:-1], bank.B.shape[1], dtype=x.dtype, device=x.device)
    for slot, rows in segments:
        rank = bank.ranks[slot]
        if rank == 0:  # this adapter does not target this layer
            continue
        z = x.index_select(0, rows) @ bank.A[slot, :rank].T
        out.index_add_(0, rows, (z @ bank.B[slot, :, :rank].T) * bank.scale[slot])
    return out


class LoRALinear(nn.Module):
    """An ``nn.Linear`` of the base model plus the per-row LoRA term of the current batch."""

    def __init__(self, base: nn.Linear, bank: LayerBank, context: LoRAContext):
        super().__init__()
        self.base = base
        self.bank = bank
        self.context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        context = self.context
        if context.slots is None or self.bank.r_max == 0:
            return out
        rows = x.reshape(x.shape[0], -1, x.shape[-1])  # [batch, tokens, d_in]
        strategy = context.strategy
        if strategy == "auto":
            strategy = "gather" if rows.shape[1] <= GATHER_MAX_TOKENS_PER_ROW else "segments"
        if strategy == "gather":
            delta = gather_bmm_delta(rows, self.bank, context.slots)
        else:
            delta = segmented_delta(rows, self.bank, context.segments)
        return out + delta.reshape(out.shape)


def wrap_linear(model: nn.Module, name: str, adapters: AdapterBank) -> LayerBank:
    """Replace the linear layer ``name`` of ``model`` by a :class:`LoRALinear` with a new, empty bank."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    base = getattr(parent, child)
    if not isinstance(base, nn.Linear):
        raise TypeError(f"{name} is {type(base).__name__}, not nn.Linear")
    bank = adapters.new_layer(base.in_features, base.out_features)
    setattr(parent, child, LoRALinear(base, bank, adapters.context))
    return bank
