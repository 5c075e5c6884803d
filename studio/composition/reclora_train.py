"""Training a RecLoRA model on rows that carry a user column (meta-LoRAs and gate together).

Rows are the studio's canonical rows (``{"messages": [...]}`` or ``{"text": ...}``) plus a
grouping column naming the user (customer, persona, author: any column, values read as
strings). Tokenising and prompt masking are the training package's own
(:func:`studio.training.tokenise.encode_rows`), batches are padded by
:func:`studio.training.data.collate` and the loss is :func:`studio.training.losses.loss_sum`
normalised by the batch's target tokens, so a personalised run sees exactly the tokens a
plain LoRA run on the same rows would. Each batch may mix users: α is set per row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from studio.composition.reclora import PersonalisedModel
from studio.errors import ValidationFailed
from studio.training.data import collate, epoch_order
from studio.training.losses import loss_sum, target_count
from studio.training.tokenise import encode_rows

Progress = Callable[[int, int, float], None]  # (step, total steps, loss of the step)


@dataclass
class PersonalisedRun:
    """What a training run did: the loss of every step and the rows it trained on."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    rows: int = 0
    dropped: int = 0
    users: list[str] = field(default_factory=list)


def users_of(rows: Sequence[dict[str, Any]], user_column: str) -> list[str]:
    """The distinct user ids of ``rows`` (as strings, in order of first appearance); every row needs one."""
    seen: dict[str, None] = {}
    for i, row in enumerate(rows):
        value = row.get(user_column)
        if value is None or str(value) == "":
            raise ValidationFailed(f"row {i + 1} has no value in the user column {user_column!r}")
        seen.setdefault(str(value), None)
    return list(seen)


def encode_user_rows(
    rows: Sequence[dict[str, Any]],
    tokenizer: Any,
    user_column: str,
    *,
    max_length: int,
    loss_on: str = "response",
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Tokenised rows, each with its ``user`` (rows the tokeniser drops are dropped with their user)."""
    users_of(rows, user_column)  # every row must name its user, checked before any tokenising
    encoded = encode_rows(rows, tokenizer, task="causal-lm", max_length=max_length, loss_on=loss_on, log=log)
    dropped = set(encoded.dropped_indices)
    kept = [str(row[user_column]) for i, row in enumerate(rows) if i not in dropped]
    return [dict(example, user=user) for example, user in zip(encoded.examples, kept, strict=True)]


def personalised_loss(pm: PersonalisedModel, batch: dict[str, Any], users: Sequence[str] | None = None) -> torch.Tensor:
    """Mean next-token loss of one padded batch, each row under its own user's α.

    Without ``users`` the caller has set them (``with pm.using(users): ...``), which is needed
    when the backward pass recomputes layers (activation checkpointing) and must see the same α.
    """
    if users is None:
        total, _ = loss_sum(pm.model, batch, "causal-lm")
    else:
        with pm.using(list(users)):
            total, _ = loss_sum(pm.model, batch, "causal-lm")
    return total / max(1, target_count(batch, "causal-lm"))


def train_personalised(
    pm: PersonalisedModel,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    *,
    user_column: str = "user",
    steps: int = 100,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    gate_learning_rate: float | None = None,
    max_length: int = 512,
    loss_on: str = "response",
    max_grad_norm: float = 1.0,
    seed: int = 0,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> PersonalisedRun:
    """Train the meta-LoRAs and the gate of ``pm`` for ``steps`` optimizer steps (AdamW, no warm-up).

    Users in ``rows`` that ``pm`` does not know are trained under the mean gate (they move
    only the meta-LoRAs); build ``pm`` with :func:`users_of` of the rows to give each a gate.
    """
    examples = encode_user_rows(rows, tokenizer, user_column, max_length=max_length, loss_on=loss_on, log=log)
    if not examples:
        raise ValidationFailed("no row has anything to learn after tokenising")
    unknown = sorted({e["user"] for e in examples} - set(pm.users))
    if unknown and log:
        log(f"{len(unknown)} users of the data are unknown to the gate and train under the mean gate")
    meta = [p for layer in pm.meta_layers().values() for p in (layer.lora_A, layer.lora_B)]
    gate = list(pm.gate.parameters())
    for p in meta + gate:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(
        [{"params": meta}, {"params": gate, "lr": gate_learning_rate or learning_rate}],
        lr=learning_rate,
        weight_decay=0.0,
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(pm.model.parameters()).device
    run = PersonalisedRun(rows=len(examples), dropped=len(rows) - len(examples), users=pm.users)
    order: list[int] = []
    epoch = 0
    pm.train()
    for step in range(1, steps + 1):
        if len(order) < min(batch_size, len(examples)):
            order += epoch_order(len(examples), seed, epoch)
            epoch += 1
        chosen, order = order[:batch_size], order[batch_size:]
        picked = [examples[i] for i in chosen]
        batch = {k: v.to(device) for k, v in collate(picked, pad_id).items()}
        optimizer.zero_grad(set_to_none=True)
        # Backward inside the users' context: activation checkpointing recomputes layers there.
        with pm.using([e["user"] for e in picked]):
            loss = personalised_loss(pm, batch)
            loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(meta + gate, max_grad_norm)
        optimizer.step()
        run.losses.append(float(loss.detach()))
        run.steps = step
        if progress:
            progress(step, steps, run.losses[-1])
    pm.eval()
    return run
