"""Training a mixture's routers: ``L = CE_LM + λ_g · CE_gate`` (composition spec §2).

``CE_gate`` is the cross-entropy of the N-way router logits of every gated layer at every
position against the task id of the example (the index of the expert whose data set it comes
from), shifted like language-model labels: position ``t`` is scored when token ``t + 1`` is a
real token, padding gets -100. Training runs at temperature 1 (the spec's choice); the
mixture's own temperature is the one used afterwards.

Tokenising, batching and the language-model loss are the studio's own
(:mod:`studio.training.tokenise`, :mod:`studio.training.data`, :mod:`studio.training.losses`),
so a mixture sees its rows exactly as the experts saw theirs; the optimiser and schedule are
:func:`studio.variants.base.default_optimization` with the spec's defaults
(:class:`studio.schema.MixtureSettings`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from studio.composition.meteora import MeteoRAModel
from studio.errors import ValidationFailed
from studio.schema import MixtureSettings
from studio.training.data import collate, epoch_order, to_device
from studio.training.losses import loss_sum, target_count
from studio.training.tokenise import IGNORE_INDEX, encode_rows
from studio.variants.base import OptimConfig, default_optimization

TASK = "causal-lm"
# on_step(step, total_steps, metrics): progress and metrics of the run (may raise JobCancelled to stop it).
StepCallback = Callable[[int, int, dict[str, float]], None]


def mixture_options(settings: MixtureSettings) -> dict[str, Any]:
    """Keyword arguments of :meth:`MeteoRAModel.from_adapters` taken from ``settings``."""
    return {
        "top_k": settings.top_k,
        "temperature": settings.temperature,
        "strategy": settings.strategy,
        "train_experts": settings.train_experts,
        "seed": settings.seed,
    }


def gate_targets(task_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[batch, seq - 1]`` gate labels: the row's task id where the next token is real, else -100."""
    labels = task_ids.view(-1, 1).expand_as(attention_mask)
    return torch.where(attention_mask[:, 1:] != 0, labels[:, 1:], torch.full_like(labels[:, 1:], IGNORE_INDEX))


def gate_loss(gate_logits: Sequence[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(mean cross-entropy, accuracy of the top-1 expert) over all gated layers and scored positions."""
    logits = torch.stack([g[:, :-1] for g in gate_logits]).float()  # [layers, batch, seq-1, N]
    expanded = targets.unsqueeze(0).expand(logits.shape[:-1])
    flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]), expanded.reshape(-1)
    loss = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX)
    scored = flat_targets != IGNORE_INDEX
    hits = (flat_logits.argmax(-1) == flat_targets) & scored
    accuracy = float(hits.sum()) / max(1, int(scored.sum()))
    return loss, accuracy


@dataclass
class MixtureLoss:
    """One batch's loss and its parts."""

    total: torch.Tensor
    lm: torch.Tensor
    gate: torch.Tensor
    gate_accuracy: float


def mixture_loss(mixture: MeteoRAModel, batch: dict[str, Any], gate_weight: float = 50.0) -> MixtureLoss:
    """``CE_LM + gate_weight · CE_gate`` of a collated batch that carries a ``task`` id per row."""
    with mixture.capture_gate_logits() as captured:
        lm_sum, _ = loss_sum(mixture, batch, TASK)
    lm = lm_sum / max(1, target_count(batch, TASK))
    gate, accuracy = gate_loss(captured, gate_targets(batch["task"], batch["attention_mask"]))
    return MixtureLoss(total=lm + gate_weight * gate, lm=lm, gate=gate, gate_accuracy=accuracy)


def encode_tasks(
    tokenizer: Any,
    rows_by_expert: Sequence[Sequence[dict[str, Any]]],
    max_length: int,
    loss_on: str = "response",
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Tokenised examples of every task, each with ``task`` = the index of its expert."""
    examples: list[dict[str, Any]] = []
    for task, rows in enumerate(rows_by_expert):
        encoded = encode_rows(list(rows), tokenizer, task=TASK, max_length=max_length, loss_on=loss_on, log=log)
        if not encoded.examples:
            raise ValidationFailed(f"the data set of expert {task} has no usable rows (none with a response to learn)")
        examples.extend({**example, "task": task} for example in encoded.examples)
    return examples


def collate_tasks(examples: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """:func:`studio.training.data.collate` plus the ``task`` id of every row."""
    batch = collate(examples, pad_id)
    batch["task"] = torch.tensor([e["task"] for e in examples], dtype=torch.long)
    return batch


@dataclass
class MixtureTrainingResult:
    """What a router training run did."""

    steps: int
    examples_per_task: list[int]
    final: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def train_mixture(
    mixture: MeteoRAModel,
    tokenizer: Any,
    rows_by_expert: Sequence[Sequence[dict[str, Any]]],
    settings: MixtureSettings | None = None,
    on_step: StepCallback | None = None,
    log: Callable[[str], None] | None = None,
) -> MixtureTrainingResult:
    """Train ``mixture``'s routers (and experts, if it was built with ``train_experts``) on labelled rows.

    ``rows_by_expert[j]``: canonical rows (chat or text) of the task expert ``j`` was trained for.
    Batches mix the tasks (seeded shuffle of all rows per epoch). ``on_step`` gets every
    ``log_every``-th step and the last one.
    """
    settings = settings or MixtureSettings()
    if len(rows_by_expert) != mixture.n_experts:
        raise ValidationFailed(f"give one data set per expert: {len(rows_by_expert)} for {mixture.n_experts} experts")
    examples = encode_tasks(tokenizer, rows_by_expert, settings.max_length, settings.loss_on, log)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    per_epoch = math.ceil(len(examples) / settings.batch_size)
    total = settings.max_steps or max(1, math.ceil(settings.epochs * per_epoch))
    params = mixture.trainable_parameters()
    optimization = default_optimization(
        params,
        OptimConfig(
            learning_rate=settings.learning_rate,
            weight_decay=settings.weight_decay,
            total_steps=total,
            warmup_steps=math.ceil(settings.warmup_ratio * total),
            scheduler="cosine",
        ),
    )
    optimizer, scheduler = optimization.optimizers[0], optimization.schedulers[0]
    max_norm = settings.max_grad_norm if settings.max_grad_norm > 0 else float("inf")
    device = mixture.device
    result = MixtureTrainingResult(steps=total, examples_per_task=_counts(examples, mixture.n_experts), final={})
    was_training = mixture.training
    mixture.train()
    try:
        with torch.random.fork_rng(devices=[]), mixture.routing(temperature=1.0):
            torch.manual_seed(settings.seed)  # expert dropout
            for step in range(1, total + 1):
                epoch, position = divmod(step - 1, per_epoch)
                order = epoch_order(len(examples), settings.seed, epoch)
                chosen = order[position * settings.batch_size : (position + 1) * settings.batch_size]
                batch = to_device(collate_tasks([examples[i] for i in chosen], pad_id), device)
                loss = mixture_loss(mixture, batch, settings.gate_loss_weight)
                loss.total.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if step % settings.log_every == 0 or step == total:
                    metrics = {
                        "loss": float(loss.total.detach()),
                        "lm_loss": float(loss.lm.detach()),
                        "gate_loss": float(loss.gate.detach()),
                        "gate_accuracy": loss.gate_accuracy,
                        "grad_norm": float(grad_norm),
                        "learning_rate": scheduler.get_last_lr()[0],
                    }
                    result.history.append({"step": step, **metrics})
                    result.final = metrics
                    if on_step is not None:
                        on_step(step, total, metrics)
    finally:
        mixture.train(was_training)
    return result


def _counts(examples: Sequence[dict[str, Any]], n: int) -> list[int]:
    counts = [0] * n
    for example in examples:
        counts[example["task"]] += 1
    return counts


@torch.no_grad()
def routing_report(
    mixture: MeteoRAModel,
    tokenizer: Any,
    rows_by_expert: Sequence[Sequence[dict[str, Any]]],
    max_length: int = 512,
    batch_size: int = 8,
    loss_on: str = "response",
) -> dict[str, Any]:
    """How well the routers find each row's task on held-out rows, over all gated layers and positions.

    Returns ``accuracy`` (share of top-1 choices equal to the task), ``per_task`` accuracy and
    ``usage[task][expert]``: the share of that task's top-1 choices that went to each expert
    (what :func:`studio.composition.meteora_charts.expert_usage_figure` draws).
    """
    examples = encode_tasks(tokenizer, rows_by_expert, max_length, loss_on)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n = mixture.n_experts
    counts = torch.zeros(n, n, dtype=torch.long)  # [task, chosen expert]
    was_training = mixture.training
    mixture.eval()
    try:
        for start in range(0, len(examples), batch_size):
            batch = to_device(collate_tasks(examples[start : start + batch_size], pad_id), mixture.device)
            with mixture.capture_gate_logits() as captured:
                mixture(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            targets = gate_targets(batch["task"], batch["attention_mask"])
            for logits in captured:
                chosen = logits[:, :-1].argmax(-1)
                scored = targets != IGNORE_INDEX
                pairs = targets[scored] * n + chosen[scored]
                counts += torch.bincount(pairs.cpu(), minlength=n * n).view(n, n)
    finally:
        mixture.train(was_training)
    totals = counts.sum(dim=1).clamp(min=1)
    return {
        "accuracy": float(counts.diag().sum()) / max(1, int(counts.sum())),
        "per_task": (counts.diag() / totals).tolist(),
        "usage": (counts / totals.unsqueeze(1)).tolist(),
        "positions": counts.sum(dim=1).tolist(),
    }


@torch.no_grad()
def prompt_routing(mixture: MeteoRAModel, tokenizer: Any, text: str) -> tuple[list[str], dict[str, list[int]]]:
    """(tokens of ``text``, module -> each token's top-1 expert) for :func:`meteora_charts.routing_heatmap`.

    Uses the mixture's current routing settings (temperature does not change the top-1 choice).
    """
    ids = tokenizer(text, return_tensors="pt")["input_ids"].to(mixture.device)
    was_training = mixture.training
    mixture.eval()
    try:
        with mixture.record_choices() as recording:
            mixture(input_ids=ids, use_cache=False)
    finally:
        mixture.train(was_training)
    tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    return tokens, {name: choice[0].tolist() for name, choice in recording.per_module().items()}
