"""Everything a run needs before its first step: task, data, tokenizer, base model, variant context."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.errors import ValidationFailed
from studio.schema import TrainRequest
from studio.sequences.windows import pooling_for
from studio.training.data import (
    BatchPlan,
    collate,
    collate_packed,
    collate_sequences,
    read_jsonl,
    sequence_groups,
    split_indices,
    to_device,
)
from studio.training.losses import target_count
from studio.training.models import is_encoder_only, load_base_model, load_tokenizer_for
from studio.training.tokenise import encode_rows


@dataclass
class TrainingData:
    """The dataset a run trains on: the canonical JSONL and its validation report."""

    path: Path
    report: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    name: str = ""

    @classmethod
    def from_row(cls, row: Any) -> TrainingData:
        """From a registry DatasetRow."""
        return cls(path=Path(row.stored_path), report=dict(row.report or {}), sha256=row.sha256, name=row.name)


def resolve_task(request: TrainRequest, data: TrainingData, base_path: Path) -> str:
    """The request's task when given explicitly, else the dataset's, else causal-lm; encoders classify."""
    if "task" in request.model_fields_set:
        task = request.task
    else:
        task = data.report.get("task") or ("classification" if is_encoder_only(base_path) else "causal-lm")
    if task == "causal-lm" and is_encoder_only(base_path):
        raise ValidationFailed(f"{request.base_model} is an encoder model: choose a classification dataset")
    return task


def dataset_labels(rows: list[dict[str, Any]], report: dict[str, Any]) -> list[Any]:
    """The sorted label list: from the report when present, else from the rows."""
    labels = report.get("labels")
    if labels:
        return list(labels)
    values = {row["label"] for row in rows if "label" in row}
    return sorted(values, key=lambda v: (isinstance(v, str), v))


@dataclass(frozen=True)
class MicroBatchCounts:
    """What one micro-batch holds: non-pad tokens, token slots, and targets of the loss."""

    real_tokens: int
    padded_tokens: int
    targets: int


@dataclass
class RunSetup:
    task: str
    tokenizer: Any
    model: Any  # plain base model on the device, before the variant wraps it
    labels: list[Any] | None
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    plan: BatchPlan
    total_steps: int
    warmup_steps: int
    pad_id: int
    truncated: int
    dropped: int
    max_length: int = 512
    packing: bool = False
    mask_style: str = "bool"  # how packed rows are kept apart (see collate_packed)
    # Pooled window loss (hyper.window_loss): the plan's units are sequences, each the indices of its
    # windows in ``train``, so a sequence's windows always share a micro-batch; None = units are examples.
    units: list[list[int]] | None = None

    def examples_of(self, indices: list[int]) -> list[dict[str, Any]]:
        """The training examples of the plan's ``indices`` (all windows of each sequence when pooling)."""
        if self.units is None:
            return [self.train[i] for i in indices]
        return [self.train[w] for i in indices for w in self.units[i]]

    def batch_of(self, indices: list[int]) -> dict[str, Any]:
        """The padded (or packed) micro-batch of the plan's ``indices``, on the host.

        When pooling, it also carries ``sequence`` (each row's sequence, 0..n-1 in the batch) and
        ``sequence_labels`` (n): the loss pools per sequence (:func:`studio.training.losses.loss_sum`).
        """

        if self.units is not None:  # classification: never packed
            return collate_sequences([[self.train[w] for w in self.units[i]] for i in indices], self.pad_id)
        examples = self.examples_of(indices)
        if self.packing:
            return collate_packed(examples, self.pad_id, self.max_length, self.mask_style)
        return collate(examples, self.pad_id)

    def micro_batch(self, k: int, device: Any) -> dict[str, Any]:
        """The k-th batch of ``batch_size`` examples (sequences when pooling) of the run, padded (never packed)."""
        indices = self.plan.micro_batch(k)
        if self.units is not None:
            return to_device(self.batch_of(indices), device)  # classification: never packed
        return to_device(collate([self.train[i] for i in indices], self.pad_id), device)

    @property
    def pooled(self) -> bool:
        """Whether a prediction pools a sequence's windows (pooled window loss): validation scores sequences."""
        return self.units is not None

    def memorisation_subset(self, n: int) -> list[dict[str, Any]]:
        """A fixed, seeded sample of ``n`` training examples (scored to measure memorisation).

        When pooling, ``n`` whole sequences (all their windows), as validation scores them.
        """
        rng = random.Random(self.plan.seed)
        if self.units is not None:
            picked = sorted(rng.sample(range(len(self.units)), min(n, len(self.units))))
            return [self.train[w] for i in picked for w in self.units[i]]
        return [self.train[i] for i in sorted(rng.sample(range(len(self.train)), min(n, len(self.train))))]

    def step_batches(self, step: int, device: Any) -> list[dict[str, Any]]:
        """The micro-batches of optimizer step ``step``: padded, or packed when the run packs."""
        return [batch for batch, _ in self.counted_step_batches(step, device)]

    def counted_step_batches(
        self, step: int, device: Any, rank: int = 0, world: int = 1
    ) -> list[tuple[dict[str, Any], MicroBatchCounts]]:
        """``step_batches`` with each micro-batch's token and target counts, taken on the host.

        Counting before the batch moves to the device keeps the training step free of
        host-device synchronisations (``int(tensor.sum())`` on a GPU waits for the queue).
        With ``world`` > 1 only rank ``rank``'s share of the step (see BatchPlan.rank_examples).
        """
        out = []
        for indices in self.plan.step_batches(step, rank, world):
            batch = self.batch_of(indices)
            counts = MicroBatchCounts(
                real_tokens=int(batch["attention_mask"].sum()),
                padded_tokens=int(batch["input_ids"].numel()),
                targets=target_count(batch, self.task),
            )
            out.append((to_device(batch, device), counts))
        return out

    def calibration_batches(self, device: Any):
        """The factory variants get: the first n micro-batches of the run (pure, no RNG use)."""

        def batches(n: int):
            for k in range(n):
                yield self.micro_batch(k, device)

        return batches


def scored_validation(
    examples: list[dict[str, Any]], max_rows: int | None, seed: int, pooled: bool = False
) -> list[dict[str, Any]]:
    """The validation rows each pass scores: all, or a fixed seeded sample of ``max_rows`` (same every pass).

    ``pooled``: the rows are whole sequences, each kept or dropped with all of its windows.
    """
    if pooled:
        groups = sequence_groups(examples)
        if not max_rows or len(groups) <= max_rows:
            return list(examples)
        keep = sorted(random.Random(seed).sample(range(len(groups)), max_rows))
        return [example for i in keep for example in groups[i]]
    if not max_rows or len(examples) <= max_rows:
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), max_rows))
    return [examples[i] for i in keep]


def mask_style_for(model: Any) -> str:
    """How packed rows are kept apart for this model's attention implementation."""
    implementation = str(getattr(model.config, "_attn_implementation", None) or "sdpa")
    if implementation.startswith("flash") or "varlen" in implementation:
        return "position_ids"
    return "additive" if implementation == "eager" else "bool"


def encoder_max_length(base_path: Path, wanted: int) -> int:
    """``wanted``, lowered to an encoder's position limit (BERT-like models cannot read past it).

    Sequence encoders pre-trained by the studio set that limit to their window length, so
    classification windows on them are exactly the pre-training windows.
    """
    import json

    if not is_encoder_only(base_path):
        return wanted
    config = json.loads((Path(base_path) / "config.json").read_text())
    limit = config.get("max_position_embeddings")
    return min(wanted, int(limit)) if limit else wanted


def prepare_run(request: TrainRequest, data: TrainingData, base_path: Path, device: Any, log: Any) -> RunSetup:
    """Read, split and tokenise the data; load tokenizer and base model; size the run."""
    hyper = request.hyper
    task = resolve_task(request, data, base_path)
    rows = read_jsonl(data.path)
    if not rows:
        raise ValidationFailed(f"dataset {data.name or data.path} has no rows")
    train_idx, val_idx = split_indices(len(rows), hyper.validation_fraction, request.seed)
    labels = dataset_labels(rows, data.report) if task == "classification" else None
    tokenizer = load_tokenizer_for(base_path)
    max_length = encoder_max_length(base_path, hyper.max_length)
    if max_length < hyper.max_length:
        log(f"{base_path.name} reads at most {max_length} tokens: max_length lowered from {hyper.max_length}")
    common = dict(task=task, max_length=max_length, loss_on=hyper.loss_on, labels=labels)
    train = encode_rows([rows[i] for i in train_idx], tokenizer, log=log, **common)
    val = encode_rows([rows[i] for i in val_idx], tokenizer, **common)
    lengths = [len(e["input_ids"]) for e in train.examples]
    units = training_units(train.examples, task, hyper.window_loss)
    if units is not None:
        lengths = [sum(lengths[w] for w in unit) for unit in units]  # tokens of a sequence's windows
        log(
            f"window loss {hyper.window_loss}: the windows of each of {len(units)} sequences share a micro-batch "
            f"and their logits are pooled ({pooling_for(hyper.window_loss)}) before one loss per sequence; "
            f"batch_size counts sequences ({len(train.examples) / len(units):.1f} windows each on average)"
        )
    plan = BatchPlan(
        len(units) if units is not None else len(train.examples),
        hyper.batch_size,
        hyper.grad_accum,
        request.seed,
        lengths=lengths,
        group=hyper.group_by_length,
    )
    total = hyper.max_steps or plan.steps_for(hyper.epochs)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model = load_base_model(base_path, task, labels, pad_id).to(device)
    packing = hyper.packing and task == "causal-lm"
    if hyper.packing and not packing:
        log("packing applies to text generation only; classification batches are padded", "warning")
    pooled = units is not None
    val_examples = scored_validation(val.examples, hyper.max_eval_rows, request.seed, pooled)
    if pooled:
        # Scored as trained: one pooled prediction per sequence (its windows share a batch), so the
        # validation loss is the training loss and the accuracy is the sequences', not single windows'.
        log(f"validation pools each sequence's windows ({pooling_for(hyper.window_loss)}) as training does")
    elif hyper.group_by_length:
        # the mean loss does not depend on the order; sorted batches carry little padding
        val_examples = sorted(val_examples, key=lambda e: -len(e["input_ids"]))
    log(
        f"{task}: {len(train.examples)} training and {len(val.examples)} validation examples"
        + (f" ({len(val_examples)} scored per validation pass)" if len(val_examples) < len(val.examples) else "")
        + f", {total} optimizer steps of {hyper.batch_size}×{hyper.grad_accum} examples"
    )
    return RunSetup(
        task=task,
        tokenizer=tokenizer,
        model=model,
        labels=labels,
        train=train.examples,
        val=val_examples,
        plan=plan,
        total_steps=total,
        warmup_steps=math.ceil(hyper.warmup_ratio * total),
        pad_id=pad_id,
        truncated=train.truncated + val.truncated,
        dropped=train.dropped + val.dropped,
        max_length=max_length,
        packing=packing,
        mask_style=mask_style_for(model),
        units=units,
    )


def pools_windows(task: str, window_loss: str) -> bool:
    """Whether a run's batches draw whole sequences (a pooled window loss on a classification task).

    The one rule for the loop, the duration estimate and the pre-submit memory check.
    """
    return task == "classification" and window_loss != "per_window"


def training_units(examples: list[dict[str, Any]], task: str, window_loss: str) -> list[list[int]] | None:
    """What a run's batches count: each sequence's window indices under a pooled window loss, else None (examples)."""
    return sequence_units(examples) if pools_windows(task, window_loss) else None


def sequence_units(examples: list[dict[str, Any]]) -> list[list[int]] | None:
    """The window indices of each sequence (examples carry ``sequence``), in order; None when not windowed."""
    if not examples or "sequence" not in examples[0]:
        return None
    units: dict[int, list[int]] = {}
    for i, example in enumerate(examples):
        units.setdefault(int(example["sequence"]), []).append(i)
    return list(units.values())
