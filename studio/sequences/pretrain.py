"""The "pretrain" job: a small BERT-style encoder pre-trained from scratch on a dataset's sequences.

LoRA-BERT's first half (spec: variants §11). The encoder is transformers' ``BertForMaskedLM``
(or, with ``architecture="roformer"``, ``RoFormerForMaskedLM``: BERT's layers with rotary positions):
the studio's classification path already loads BERT checkpoints as sequence classifiers and
adapts their ``query/key/value/dense`` linears (the attention and feed-forward projections), and
BERT's learnt absolute positions are bounded by ``max_position_embeddings``, which is set to the
window length so classification windows are exactly the pre-training ones. RoFormer keeps
BERT's module names (so LoRA targets the same linears) and is why the rotary option is RoFormer
and not ModernBERT, which brings its own module names and attention kernels.

What it does:

1. finds the sequence column (the request's, else the one the import detected) and refuses a
   dataset without one;
2. builds the tokenizer (the import's proposal unless told: overlapping 3-mers for DNA/RNA);
3. reads every training sequence whole as overlapping windows (:mod:`studio.sequences.windows`),
   holding a seeded share of the sequences out to report a validation loss; an optional extra
   dataset of unlabelled sequences is added to training (never a test set: the job trains on
   the dataset it is given, which is the training file);
4. sizes the encoder (``auto``: from the training tokens and the device), estimates the time by
   timing a real step, and trains masked-LM (15 % of tokens; for k-mers whole spans of 2k - 1
   tokens, so that k nucleotides are hidden from every unmasked neighbour; 80/10/10 mask/random/keep);
5. saves encoder + tokenizer in ``<models_dir>/pretrained/<name>/`` and registers it as a base
   model, which ``studio train --base <name>`` then picks like a bundled one.

Masks depend only on (seed, step), and checkpoints hold the optimizer, scheduler and step, so a
re-queued job resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import JobCancelled, ValidationFailed
from studio.progress import Reporter
from studio.schema import ENCODER_ARCHITECTURES, PretrainRequest

# (hidden, layers, heads) of the presets; the feed-forward width is 4 × hidden, as in BERT.
SIZES: dict[str, tuple[int, int, int]] = {"tiny": (64, 2, 2), "small": (128, 4, 4), "base": (256, 6, 8)}
# "auto": about 20 training tokens per parameter is where a bigger model stops paying (Chinchilla);
# with the presets' sizes (about 0.1 M, 0.8 M and 4.8 M parameters without embeddings) that is:
AUTO_SMALL_TOKENS = 4_000_000
AUTO_BASE_TOKENS = 40_000_000  # and only on a GPU: a CPU would take days
CHECKPOINTS = "checkpoints"
MLM_IGNORE = -100


@dataclass
class SequenceSource:
    """Where a dataset's sequences are: the stored rows' field, and the import's detection."""

    field: str  # canonical row key holding the sequence
    column: str  # the original column name (what the user sees)
    kind: str  # dna, rna or protein
    tokenizer: str  # proposed tokenizer kind
    k: int


def sequence_source(row: Any, column: str | None = None) -> SequenceSource:
    """The sequence column of dataset ``row``; ValidationFailed with what to do when there is none."""
    from studio.sequences.alphabet import classify_values
    from studio.training.data import read_jsonl

    report = dict(row.report or {})
    detected = report.get("sequence") or None
    mapping = dict(report.get("mapping") or {})
    column = column or (detected or {}).get("column")
    label = f"dataset {row.id} ({row.name})"
    if not column:
        raise ValidationFailed(
            f"{label} has no column of DNA, RNA or protein sequences, so there is nothing to pre-train an "
            "encoder on; import a file whose column holds sequences (e.g. `studio dataset add f.jsonl --map "
            "text=sequence --map label=label`) or name the column with sequence_column"
        )
    field = next((f for f, c in mapping.items() if c == column), column)
    rows = read_jsonl(row.stored_path)
    values = [r.get(field) for r in rows[:200]]
    if not any(isinstance(v, str) for v in values):
        raise ValidationFailed(
            f"column {column!r} of {label} is not kept in its stored rows (kept: {', '.join(sorted(rows[0]))}); "
            f"re-import the file with --map text={column}"
        )
    if detected and detected.get("column") == column:
        kind, tokenizer, k = detected["kind"], detected["tokenizer"], int(detected.get("k") or 1)
    else:
        found = classify_values(values)
        if found is None:
            raise ValidationFailed(
                f"column {column!r} of {label} does not hold DNA, RNA or protein sequences; "
                "pre-training reads sequences only"
            )
        kind = found[0]
        tokenizer, k = ("protein", 1) if kind == "protein" else ("kmer", 3)
    return SequenceSource(field=field, column=column, kind=kind, tokenizer=tokenizer, k=k)


def tokenizer_choice(request: PretrainRequest, source: SequenceSource) -> tuple[str, int]:
    """(kind, k) of the tokenizer: the request's, else the import's proposal; refuses mismatches.

    ``k`` is the overlap that masking must respect: the k of overlapping k-mers, 1 for every tokenizer
    whose tokens share no letters (single letters, and codons: non-overlapping within their frame).
    """
    kind = source.tokenizer if request.tokenizer == "auto" else request.tokenizer
    if (kind == "protein") != (source.kind == "protein"):
        raise ValidationFailed(
            f"a {kind} tokenizer cannot read {source.kind} sequences; pick "
            + ("protein" if source.kind == "protein" else "nucleotide, kmer or codon")
        )
    if kind == "kmer":
        return kind, request.k or (source.k if source.k > 1 else 3)
    return kind, 1


def encoder_shape(request: PretrainRequest, train_tokens: int, device_type: str) -> tuple[str, int, int, int]:
    """(size name, hidden, layers, heads): explicit fields win over the preset; auto sizes from the data."""
    size = request.size
    if size == "auto":
        if device_type == "cuda" and train_tokens >= AUTO_BASE_TOKENS:
            size = "base"
        elif train_tokens >= AUTO_SMALL_TOKENS:
            size = "small"
        else:
            size = "tiny"
    hidden, layers, heads = SIZES[size]
    hidden = request.hidden_size or hidden
    layers = request.num_layers or layers
    heads = request.num_heads or (heads if hidden % heads == 0 else 1)
    if hidden % heads:
        raise ValidationFailed(f"num_heads: {heads} heads must divide hidden_size {hidden}")
    return size, hidden, layers, heads


ARCHITECTURE_NAMES = {"bert": "BERT", "roformer": "RoFormer (rotary positions)"}


def build_encoder(
    tokenizer: Any,
    hidden: int,
    layers: int,
    heads: int,
    max_length: int,
    seed: int,
    pooling: str = "cls",
    architecture: str = "bert",
) -> Any:
    """A fresh masked LM for ``tokenizer``'s vocabulary, positions up to ``max_length``.

    ``architecture``: ``bert`` (``BertForMaskedLM``, learnt absolute positions) or ``roformer``
    (``RoFormerForMaskedLM``: the same layers, module names included, with rotary positions in
    attention). Why RoFormer: a rule that depends on where tokens are relative to each other ("a
    start codon, then no stop codon in the next N codons") is learnt from rotary positions in a few
    hundred steps where BERT's absolute ones stay near chance (``scripts/positional_rule_probe.py``),
    and LoRA on a frozen encoder adapts query/key projections, which see rotary positions but not
    BERT's position embeddings. ``pooling`` is saved in its config (``classifier_pooling``):
    classifiers built on the encoder read it (:mod:`studio.sequences.pooling`).
    """
    import torch

    if architecture not in ENCODER_ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ENCODER_ARCHITECTURES}, not {architecture!r}")
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=max_length,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        classifier_pooling=pooling,
    )
    torch.manual_seed(seed)
    if architecture == "roformer":
        from transformers import RoFormerConfig, RoFormerForMaskedLM

        # RoFormer's sequence-classification head (dense + out_proj) is new and trained in full with the
        # classifier (modules_to_save), so unlike BERT's pooler nothing random is left outside the adapter.
        return RoFormerForMaskedLM(RoFormerConfig(embedding_size=hidden, **shape))
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(**shape)
    model = BertForMaskedLM(config)
    if pooling == "cls":
        # A masked LM has no pooler, so a classifier built on the saved encoder would draw a new
        # random one each time it is loaded: training and evaluation would read [CLS] through
        # different weights (the adapter saves only LoRA factors on it). A seeded pooler saved
        # with the encoder (never trained by the MLM loss: it gets no gradient) makes them agree.
        from transformers.models.bert.modeling_bert import BertPooler

        model.bert.pooler = BertPooler(config)
    return model


def mask_batch(batch: dict[str, Any], tokenizer: Any, mask_prob: float, k: int, generator: Any) -> dict[str, Any]:
    """Masked-LM inputs and labels for a padded batch (labels -100 where nothing is to be predicted).

    Nucleotide/protein tokens: each non-special token is chosen with ``mask_prob``. k-mers: span
    starts are chosen with ``mask_prob / (2k - 1)`` and the 2k - 1 tokens from each start are masked
    together, so about ``mask_prob`` of the tokens are chosen. Why 2k - 1 and not k: overlapping
    k-mers share k - 1 letters with each neighbour, so a span of only k masked 3-mers hides a single
    nucleotide (the unmasked tokens on both sides spell out the rest) and the task collapses to a
    4-way guess; a span of 2k - 1 hides k consecutive nucleotides (a whole k-mer) from every
    unmasked token.
    Chosen tokens become [MASK] (80 %), a random token (10 %) or stay (10 %), as in BERT.
    """
    import torch

    ids = batch["input_ids"].clone()
    special = torch.zeros_like(ids, dtype=torch.bool)
    for sid in tokenizer.all_special_ids:
        special |= ids == sid
    if k > 1:
        span = 2 * k - 1
        starts = (torch.rand(ids.shape, generator=generator) < mask_prob / span) & ~special
        chosen = starts.clone()
        for shift in range(1, span):
            chosen[:, shift:] |= starts[:, :-shift]
    else:
        chosen = torch.rand(ids.shape, generator=generator) < mask_prob
    chosen &= ~special
    labels = torch.where(chosen, ids, torch.full_like(ids, MLM_IGNORE))
    roll = torch.rand(ids.shape, generator=generator)
    first = len(tokenizer.all_special_ids)  # the studio's sequence vocabularies put the specials first
    random_tokens = torch.randint(first, len(tokenizer), ids.shape, generator=generator)
    ids = torch.where(chosen & (roll < 0.8), torch.full_like(ids, tokenizer.mask_token_id), ids)
    ids = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_tokens, ids)
    return {"input_ids": ids, "attention_mask": batch["attention_mask"], "labels": labels}


@dataclass
class PretrainData:
    """The windows of the run and what they came from."""

    train: list[list[int]]
    val: list[list[int]]
    train_sequences: int
    val_sequences: int
    extra_sequences: int
    train_tokens: int

    def steps(self, request: PretrainRequest) -> int:
        if request.max_steps:
            return request.max_steps
        return max(1, math.ceil(request.epochs * len(self.train) / request.batch_size))


def read_windows(
    request: PretrainRequest, registry: Any, tokenizer: Any, source: SequenceSource, log: Any
) -> PretrainData:
    """Windows of the training sequences (+ the extra dataset's), and of the held-out ones."""
    from studio.datasets.splits import split_rows
    from studio.sequences.windows import encode_windows
    from studio.training.data import read_jsonl

    def sequences(row: Any, field: str) -> list[str]:
        return [r[field] for r in read_jsonl(row.stored_path) if isinstance(r.get(field), str) and r[field].strip()]

    main = sequences(registry.get_dataset(request.dataset_id), source.field)
    train_idx, val_idx = split_rows(len(main), request.validation_fraction, request.seed)
    train_seqs = [main[i] for i in train_idx]
    extra: list[str] = []
    if request.extra_dataset_id is not None:
        extra_row = registry.get_dataset(request.extra_dataset_id)
        extra = sequences(extra_row, sequence_source(extra_row).field)
        log(f"adding {len(extra)} unlabelled sequences of dataset {extra_row.id} ({extra_row.name})")

    def windows(seqs: list[str]) -> list[list[int]]:
        return [w for s in seqs for w in encode_windows(tokenizer, s, request.max_length, request.window_overlap)]

    train = windows(train_seqs + extra)
    if not train:
        raise ValidationFailed(f"dataset {request.dataset_id} has no sequences to pre-train on")
    val = windows([main[i] for i in val_idx])
    return PretrainData(
        train=train,
        val=val,
        train_sequences=len(train_seqs),
        val_sequences=len(val_idx),
        extra_sequences=len(extra),
        train_tokens=sum(len(w) for w in train),
    )


def batch_of(windows: list[list[int]], indices: list[int], pad_id: int) -> dict[str, Any]:
    from studio.training.data import collate

    return collate([{"input_ids": windows[i], "labels": 0} for i in indices], pad_id)


def step_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The windows of optimizer step ``step`` (1-based): a pure function of (n, seed, step)."""
    from studio.training.data import epoch_order

    per_epoch = max(1, math.ceil(n / batch_size))
    epoch, k = divmod(step - 1, per_epoch)
    order = epoch_order(n, seed, epoch)
    return order[k * batch_size : (k + 1) * batch_size]


def mlm_loss(model: Any, batch: dict[str, Any]) -> Any:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    return out.loss


def validation_loss(
    model: Any, windows: list[list[int]], tokenizer: Any, request: PretrainRequest, k: int, device: Any
) -> float | None:
    """Mean masked-LM loss of the held-out windows under fixed masks (the same at every pass)."""
    import torch

    if not windows:
        return None
    generator = torch.Generator().manual_seed(request.seed + 1)
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(windows), request.batch_size):
            indices = list(range(start, min(start + request.batch_size, len(windows))))
            batch = mask_batch(
                batch_of(windows, indices, tokenizer.pad_token_id), tokenizer, request.mask_prob, k, generator
            )
            n = int((batch["labels"] != MLM_IGNORE).sum())
            if n:
                total += float(mlm_loss(model, {key: v.to(device) for key, v in batch.items()})) * n
                count += n
    model.train()
    return total / count if count else None


def estimate_time(request: PretrainRequest, data: PretrainData, model: Any, tokenizer: Any, k: int, device: Any) -> Any:
    """The training module's :class:`~studio.training.duration.RunEstimate` from one timed step here."""
    import copy

    import torch

    from studio.training.duration import MeasuredSpeed, RunEstimate, current_loadavg, validation_passes

    steps = data.steps(request)
    probe = copy.deepcopy(model).to(device)
    indices = sorted(range(len(data.train)), key=lambda i: -len(data.train[i]))[: request.batch_size]
    generator = torch.Generator().manual_seed(0)
    batch = mask_batch(
        batch_of(data.train, indices, tokenizer.pad_token_id), tokenizer, request.mask_prob, k, generator
    )
    batch = {key: v.to(device) for key, v in batch.items()}
    timings = []
    for _ in range(2):  # the first is a warm-up
        began = time.perf_counter()
        mlm_loss(probe, batch).backward()
        timings.append(time.perf_counter() - began)
    del probe
    # Batches are shuffled: most hold a long window, so the longest batch is close to a typical one.
    step_s = timings[-1] * 1.15  # + the optimizer step
    passes = validation_passes(steps, request.eval_every, bool(data.val))
    eval_s = passes * (timings[-1] / 3) * max(1, math.ceil(len(data.val) / request.batch_size))
    measured = MeasuredSpeed(
        step_s=timings[-1],
        step_tokens=int(batch["input_ids"].numel()),
        forward_s=timings[-1] / 3,
        load_s=0.0,
        threads=torch.get_num_threads(),
        loadavg=current_loadavg(),
        measured_at=time.time(),
    )
    return RunEstimate(
        setup_s=2.0,
        train_s=steps * step_s,
        eval_s=eval_s,
        steps=steps,
        step_s=step_s,
        eval_passes=passes,
        eval_rows=len(data.val),
        measured=measured,
    )


@dataclass
class Plan:
    """Everything decided before the first step (shared by the job and the CLI's estimate)."""

    source: SequenceSource
    kind: str
    k: int
    tokenizer: Any
    data: PretrainData
    size: str
    shape: tuple[int, int, int]
    model: Any
    architecture: str = "bert"


def plan_pretraining(request: PretrainRequest, registry: Any, device_type: str, log: Any) -> Plan:
    """Column, tokenizer, windows and a fresh encoder for ``request`` (no training)."""
    from studio.sequences.tokenizers import build_tokenizer

    source = sequence_source(registry.get_dataset(request.dataset_id), request.sequence_column)
    kind, k = tokenizer_choice(request, source)
    tokenizer = build_tokenizer(kind, k, model_max_length=request.max_length)
    # Saved in tokenizer_config.json: classification windows overlap as the pre-training ones did.
    tokenizer.init_kwargs["window_overlap"] = request.window_overlap
    data = read_windows(request, registry, tokenizer, source, log)
    size, hidden, layers, heads = encoder_shape(request, data.train_tokens, device_type)
    model = build_encoder(
        tokenizer,
        hidden,
        layers,
        heads,
        request.max_length,
        request.seed,
        request.classifier_pooling,
        request.architecture,
    )
    return Plan(source, kind, k, tokenizer, data, size, (hidden, layers, heads), model, request.architecture)


def describe_plan(plan: Plan) -> str:
    hidden, layers, heads = plan.shape
    tok = {
        "kmer": f"overlapping {plan.k}-mers",
        "codon": "codons in each of the 3 reading frames",
    }.get(plan.kind, f"{plan.kind} (one token per letter)")
    params = sum(p.numel() for p in plan.model.parameters())
    data = plan.data
    return (
        f"column {plan.source.column!r} ({plan.source.kind}), tokenizer {tok}; {ARCHITECTURE_NAMES[plan.architecture]} "
        f"encoder {plan.size}: hidden {hidden}, "
        f"{layers} layers, {heads} heads, {params:,} parameters; {data.train_sequences} training sequences"
        + (f" + {data.extra_sequences} unlabelled" if data.extra_sequences else "")
        + f" as {len(data.train)} windows ({data.train_tokens:,} tokens), {data.val_sequences} held out"
    )


def run_pretrain_job(request: PretrainRequest, reporter: Reporter, ctx: Any) -> dict[str, Any]:
    """Pre-train, save and register the encoder; returns where it is and how the loss went."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from studio.models.base_models import pretrained_model_path, register_pretrained_model

    began = time.monotonic()
    registry, settings = ctx.registry, ctx.settings
    dataset = registry.get_dataset(request.dataset_id)
    name = request.name or f"seq-encoder-{_slug(dataset.name)}-{ctx.job_id}"
    out_dir = pretrained_model_path(settings, name)
    assert out_dir is not None  # the schema's name pattern has no path characters
    if (out_dir / "config.json").exists():
        raise ValidationFailed(f"a pre-trained base model named {name!r} exists; choose another name")
    device = torch.device(ctx.device.torch_device)
    plan = plan_pretraining(request, registry, ctx.device.type, reporter.log)
    reporter.log(describe_plan(plan))
    estimate = estimate_time(request, plan.data, plan.model, plan.tokenizer, plan.k, device)
    reporter.log(f"time estimate: {estimate.describe()}; {estimate.breakdown()}")
    model, tokenizer, data, k = plan.model.to(device), plan.tokenizer, plan.data, plan.k
    model.train()
    total = data.steps(request)
    optimizer = torch.optim.AdamW(model.parameters(), lr=request.learning_rate, weight_decay=request.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(request.warmup_ratio * total), total)
    start = _resume(ctx.previous_checkpoint, model, optimizer, scheduler, reporter)
    first_eval = validation_loss(model, data.val, tokenizer, request, k, device) if start == 0 else None
    if first_eval is not None:
        reporter.metrics(0, {"eval_loss": first_eval})
    losses: list[float] = []
    window, window_tokens, window_start = [], 0, time.monotonic()
    train_s, eval_loss, step = 0.0, first_eval, start
    try:
        for step in range(start + 1, total + 1):
            reporter.check_cancelled()
            step_began = time.monotonic()
            generator = torch.Generator().manual_seed(request.seed * 1_000_003 + step)  # masks: f(seed, step)
            indices = step_indices(len(data.train), request.batch_size, request.seed, step)
            plain = batch_of(data.train, indices, tokenizer.pad_token_id)
            batch = {
                key: v.to(device) for key, v in mask_batch(plain, tokenizer, request.mask_prob, k, generator).items()
            }
            loss = mlm_loss(model, batch)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            losses.append(value)
            window.append(value)
            window_tokens += int(plain["attention_mask"].sum())
            train_s += time.monotonic() - step_began
            reporter.progress(step, total)
            if step % request.log_every == 0 or step == total:
                seconds = max(1e-9, time.monotonic() - window_start)
                reporter.metrics(
                    step,
                    {
                        "loss": sum(window) / len(window),
                        "learning_rate": float(scheduler.get_last_lr()[0]),
                        "grad_norm": float(norm),
                        "tokens_per_s": window_tokens / seconds,
                        "elapsed_s": reporter.elapsed,
                    },
                )
                window, window_tokens, window_start = [], 0, time.monotonic()
            if step % request.eval_every == 0 and step != total and data.val:
                reporter.metrics(step, {"eval_loss": validation_loss(model, data.val, tokenizer, request, k, device)})
            if step % request.save_every == 0 and step != total:
                _save_checkpoint(ctx.work_dir, step, model, optimizer, scheduler, reporter)
    except JobCancelled:
        if step - 1 > start:
            _save_checkpoint(ctx.work_dir, step - 1, model, optimizer, scheduler, reporter)
        raise
    if data.val:
        eval_loss = validation_loss(model, data.val, tokenizer, request, k, device)
        reporter.metrics(total, {"eval_loss": eval_loss})
    model = model.to("cpu").eval()
    info = {
        "request": request.model_dump(mode="json"),
        "sequence_column": plan.source.column,
        "sequence_kind": plan.source.kind,
        "tokenizer": {"kind": plan.kind, "k": k},
        "architecture": request.architecture,
        "size": plan.size,
        "hidden_size": plan.shape[0],
        "num_layers": plan.shape[1],
        "num_heads": plan.shape[2],
        "parameters": sum(p.numel() for p in model.parameters()),
        "windows": {"max_length": request.max_length, "overlap": request.window_overlap},
        "train_sequences": data.train_sequences,
        "extra_sequences": data.extra_sequences,
        "val_sequences": data.val_sequences,
        "train_windows": len(data.train),
        "train_tokens": data.train_tokens,
        "steps": total,
        "first_loss": losses[0] if losses else None,
        "final_loss": sum(losses[-request.log_every :]) / len(losses[-request.log_every :]) if losses else None,
        "first_eval_loss": first_eval,
        "eval_loss": eval_loss,
        "train_seconds": train_s,
        "estimate": estimate.as_dict(),
    }
    _save_encoder(model, tokenizer, out_dir, info)
    hidden, layers, heads = plan.shape
    description = (
        f"{ARCHITECTURE_NAMES[request.architecture]} encoder pre-trained by job {ctx.job_id} on {plan.source.kind.upper()} of dataset {dataset.id} "
        f"({dataset.name}); {plan.kind}{'' if k == 1 else f' k={k}'}, hidden {hidden}, {layers} layers, "
        f"windows of {request.max_length} tokens"
    )
    row = register_pretrained_model(registry, name, out_dir, description)
    reporter.log(f"base model {name!r} saved to {out_dir}; train a classifier with `studio train --base {name}`")
    return {
        "base_model": row.name,
        "base_model_path": str(out_dir),
        **{key: value for key, value in info.items() if key not in ("request", "estimate")},
        "estimate_s": estimate.total_s,
        "elapsed_s": time.monotonic() - began,
    }


def _slug(text: str) -> str:
    import re

    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text or "data").strip("-._")
    return (slug or "data")[:40]


def _save_encoder(model: Any, tokenizer: Any, out_dir: Path, info: dict[str, Any]) -> None:
    """Write weights, config, tokenizer and ``pretraining.json`` under a temporary name, then rename."""
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "pretraining.json").write_text(json.dumps(info, indent=2, default=str))
    os.replace(tmp, out_dir)


def _save_checkpoint(work_dir: Path, step: int, model: Any, optimizer: Any, scheduler: Any, reporter: Reporter) -> None:
    """Weights + optimizer + scheduler of ``step``, written atomically; older ones removed."""
    import torch
    from safetensors.torch import save_file

    root = Path(work_dir) / CHECKPOINTS
    final, tmp = root / f"step-{step:06d}", root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {n: p.detach().cpu().clone() for n, p in model.state_dict().items()}  # clones: tied weights
    save_file(tensors, str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "trainer_state.pt")
    (tmp / "checkpoint.json").write_text(json.dumps({"step": step, "kind": "pretrain"}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(root.glob("step-*"))[:-2]:
        shutil.rmtree(old, ignore_errors=True)
    reporter.checkpoint(str(final), step)


def _resume(path: str | None, model: Any, optimizer: Any, scheduler: Any, reporter: Reporter) -> int:
    """Load a checkpoint of an earlier attempt of this job; returns its step (0 without one)."""
    if not path or not (Path(path) / "checkpoint.json").exists():
        return 0
    import torch
    from safetensors.torch import load_file

    meta = json.loads((Path(path) / "checkpoint.json").read_text())
    if meta.get("kind") != "pretrain":
        return 0
    model.load_state_dict(load_file(str(Path(path) / "model.safetensors")), strict=False)
    state = torch.load(Path(path) / "trainer_state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    reporter.log(f"resumed from {path} at step {meta['step']}")
    return int(meta["step"])
