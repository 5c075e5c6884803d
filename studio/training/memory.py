"""How much memory a training job needs, before it starts, and what to do when it would not fit.

:func:`estimate_memory` is a pure function of the model's shape and the job's settings
(the UI and ``studio train`` call it too). It adds up:

- **weights**: every base parameter in fp32 (the base is never converted);
- **adapter**: trainable parameters × (weight + gradient + two AdamW moments), fp32;
- **activations**: bytes saved for the backward pass per token and layer × batch × length
  (only each layer's input when gradient checkpointing is on, plus one layer recomputed);
- **logits**: one chunk of labelled tokens × vocabulary with the chunked loss, or the whole
  batch × length × vocabulary (several copies) with plain full logits;
- **runtime**: the Python process with torch and transformers loaded (CPU), or the CUDA context;
- on a CPU, activations and logits × :data:`HEAP_SLACK` for what the allocator keeps (it reuses
  freed memory instead of faulting fresh pages in, see :func:`tune_allocator`).

The per-token constants were fitted to peak-RSS measurements of this code (SmolLM2-135M, LoRA
on all linears, CPU; docs/performance.md) and rounded up. Other architectures scale by their
hidden and intermediate sizes and layer count; treat the result as a guide (±25 %).

:func:`plan_memory` turns the estimate into decisions against a budget
(``STUDIO_MEMORY_BUDGET_GB``, else 90 % of GPU memory or half the host RAM):
with ``gradient_checkpointing="auto"`` a job that would take more than :data:`TIGHT_FRACTION`
of the budget is made smaller — on a CPU by smaller micro-batches with more accumulation
(the same examples per optimizer step), then checkpointing; on a GPU by checkpointing
first; a job over the whole budget gets smaller micro-batches down to one example, and a
job that does not fit even then is refused with the numbers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from studio.errors import ValidationFailed

GIB = 1024**3
TIGHT_FRACTION = 1 / 3  # auto makes a job smaller above this share of the budget
CPU_BUDGET_FRACTION = 0.5  # of the host RAM: the rest is for the web process, the playground and the OS
GPU_BUDGET_FRACTION = 0.9

# Bytes held for the backward pass per token and decoder layer, in units of (hidden, intermediate)
# values, LoRA on every linear with dropout, sdpa attention: the live tensors, fitted to the peak RSS
# of SmolLM2-135M training steps on CPU (batch 4-8 × 256-512 tokens) with freed memory returned to
# the OS at once (a 1 MiB mmap threshold); docs/performance.md. HEAP_SLACK adds the allocator's share.
ACT_FP32 = (18 * 4, 6 * 4)  # measured 2.32 MB/token over 30 layers
ACT_AUTOCAST = (14 * 4, 4 * 4)  # measured 1.64 MB/token: bf16 copies of matmul inputs, fp32 elsewhere
CKPT_PER_LAYER = 13  # bytes per hidden value and layer kept with checkpointing (measured 0.27 MB/token in all)
FULL_LOGITS_FP32 = 16  # bytes per token and vocabulary entry: logits, shifted copy, log-softmax, gradient
FULL_LOGITS_LOW = 18  # plus the low-precision logits and their gradient
RUNTIME_CPU = int(0.5 * GIB)  # python + torch + transformers + tokenizer (measured 0.38 GiB)
HEAP_SLACK = 1.6  # CPU: peak RSS / live activations+logits with heap reuse (tune_allocator), measured 1.37-1.6
RUNTIME_CUDA = int(0.5 * GIB)  # CUDA context and allocator slack


@dataclass(frozen=True)
class ModelShape:
    """The few numbers of a transformer that decide its training memory."""

    n_params: int
    hidden_size: int
    num_layers: int
    intermediate_size: int
    vocab_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """From a transformers ``config.json`` dict (Llama-style, GPT-2-style and BERT-style names)."""

        def first(*names: str, default: Any = None) -> Any:
            for name in names:
                if config.get(name) is not None:
                    return config[name]
            return default

        hidden = int(first("hidden_size", "n_embd", "d_model"))
        layers = int(first("num_hidden_layers", "n_layer", "num_layers"))
        inter = int(first("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden))
        vocab = int(first("vocab_size", default=32_000))
        heads = int(first("num_attention_heads", "n_head", default=max(1, hidden // 64)))
        kv_heads = int(first("num_key_value_heads", default=heads))
        head_dim = int(first("head_dim", default=hidden // heads))
        gated = config.get("hidden_act", config.get("activation_function", "")) in ("silu", "swiglu")
        attn = hidden * head_dim * (2 * heads + 2 * kv_heads)
        mlp = (3 if gated else 2) * hidden * inter
        embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings", True) else 2)
        n_params = embeddings + layers * (attn + mlp + 2 * hidden) + hidden
        return cls(n_params, hidden, layers, inter, vocab, heads, kv_heads, head_dim)

    @classmethod
    def from_path(cls, path: str | Path) -> ModelShape:
        return cls.from_config(json.loads((Path(path) / "config.json").read_text()))

    @classmethod
    def from_model(cls, model: Any) -> ModelShape:
        """From a loaded model: its config, with the exact parameter count."""
        config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
        shape = cls.from_config(config)
        n_params = sum(p.numel() for p in model.parameters())
        return cls(**{**asdict(shape), "n_params": n_params})

    def lora_params(self, rank: int) -> int:
        """Trainable parameters of a rank-``rank`` LoRA on every attention and MLP linear."""
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        h, i = self.hidden_size, self.intermediate_size
        per_layer = (h + q) * 2 + (h + kv) * 2 + (h + i) * 3
        return rank * per_layer * self.num_layers


@dataclass
class MemoryEstimate:
    """Peak memory of a training job, by part (bytes)."""

    weights: int
    adapter: int
    activations: int
    logits: int
    runtime: int
    batch_size: int  # examples per micro-batch the estimate is for
    seq_len: int
    precision: str
    gradient_checkpointing: bool
    loss_chunk_tokens: int

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.activations + self.logits + self.runtime

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}

    def describe(self) -> str:
        parts = [
            ("weights", self.weights),
            ("adapter+optimizer", self.adapter),
            ("activations", self.activations),
            ("logits", self.logits),
            ("runtime", self.runtime),
        ]
        shown = ", ".join(f"{name} {gib(value)}" for name, value in parts)
        ckpt = "on" if self.gradient_checkpointing else "off"
        return (
            f"{gib(self.total)} ({shown}; micro-batch {self.batch_size}×{self.seq_len} tokens, "
            f"{self.precision}, checkpointing {ckpt})"
        )


def gib(value: int | float) -> str:
    return f"{value / GIB:.2f} GiB"


def estimate_memory(
    shape: ModelShape,
    *,
    batch_size: int,
    seq_len: int,
    precision: str = "fp32",
    gradient_checkpointing: bool = False,
    loss_chunk_tokens: int = 1024,
    trainable_params: int | None = None,
    lora_rank: int = 8,
    task: str = "causal-lm",
    device_type: str = "cpu",
    attention: str = "sdpa",
    attention_len: int | None = None,
) -> MemoryEstimate:
    """Peak memory of one training step of ``batch_size`` rows of ``seq_len`` tokens (pure; no torch).

    ``attention_len`` is how far attention reaches when a row is several windows read apart (a
    sequence's windows under a pooled window loss); by default the row's own length.
    """
    tokens = max(1, batch_size) * max(1, seq_len)
    h, i = shape.hidden_size, shape.intermediate_size
    trainable = trainable_params if trainable_params is not None else shape.lora_params(lora_rank)
    low = precision in ("bf16", "fp16")
    coef_h, coef_i = ACT_AUTOCAST if low else ACT_FP32
    per_layer = coef_h * h + coef_i * i  # bytes per token, one layer, everything saved
    if attention == "eager":  # scores and probabilities are materialised: heads × length per token
        per_layer += shape.num_heads * (attention_len or seq_len) * (6 if low else 8)
    if gradient_checkpointing:
        activations = tokens * (CKPT_PER_LAYER * h * shape.num_layers + per_layer)
    else:
        activations = tokens * per_layer * shape.num_layers
    if task == "classification":
        logits = 0
    elif loss_chunk_tokens > 0:
        # one chunk of fp32 logits (probabilities in place) + a low-precision copy, and the
        # gathered hidden states with their gradient
        chunk = min(loss_chunk_tokens, tokens)
        logits = chunk * shape.vocab_size * (6 if low else 4) + tokens * h * 8
    else:
        # logits, their fp32 copy, log-softmax and its gradient for the whole batch
        logits = tokens * shape.vocab_size * (FULL_LOGITS_LOW if low else FULL_LOGITS_FP32)
    slack = 1.0 if device_type == "cuda" else HEAP_SLACK
    return MemoryEstimate(
        weights=shape.n_params * 4,
        adapter=trainable * 16,
        activations=int(activations * slack),
        logits=int(logits * slack),
        runtime=RUNTIME_CUDA if device_type == "cuda" else RUNTIME_CPU,
        batch_size=batch_size,
        seq_len=seq_len,
        precision=precision,
        gradient_checkpointing=gradient_checkpointing,
        loss_chunk_tokens=loss_chunk_tokens,
    )


def memory_budget(settings: Any, device: Any) -> int | None:
    """Bytes a training job may use: STUDIO_MEMORY_BUDGET_GB, else a share of the device's memory."""
    configured = getattr(settings, "memory_budget_gb", None)
    if configured:
        return int(configured * GIB)
    total = getattr(device, "memory_bytes", None)
    if not total and getattr(device, "type", "cpu") == "cpu":
        total = host_memory_bytes()
    if not total:
        return None
    fraction = GPU_BUDGET_FRACTION if getattr(device, "type", "cpu") == "cuda" else CPU_BUDGET_FRACTION
    return int(total * fraction)


def host_memory_bytes() -> int | None:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass
class MemoryPlan:
    """What a run does about memory: checkpointing, micro-batch size, and the estimate behind it."""

    estimate: MemoryEstimate
    budget: int | None
    gradient_checkpointing: bool
    micro_batch_size: int
    batch_size: int
    notes: list[str] = field(default_factory=list)
    micro_tokens: int | None = None  # padded-token budget per micro-batch when split (set by the loop)

    @property
    def fits(self) -> bool:
        return self.budget is None or self.estimate.total <= self.budget

    @property
    def split(self) -> bool:
        return self.micro_batch_size < self.batch_size

    def describe(self) -> str:
        budget = f" of a {gib(self.budget)} budget" if self.budget else ""
        text = f"memory estimate {self.estimate.describe()}{budget}"
        return text + ("; " + "; ".join(self.notes) if self.notes else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate.as_dict(),
            "budget": self.budget,
            "gradient_checkpointing": self.gradient_checkpointing,
            "micro_batch_size": self.micro_batch_size,
            "micro_tokens": self.micro_tokens,
            "batch_size": self.batch_size,
            "notes": list(self.notes),
        }


def plan_memory(
    shape: ModelShape,
    *,
    batch_size: int,
    seq_len: int,
    budget: int | None,
    checkpointing: str = "auto",
    refuse: bool = True,
    device_type: str = "cpu",
    **kwargs: Any,
) -> MemoryPlan:
    """Decide checkpointing and the micro-batch size for ``budget`` bytes (None = unlimited).

    ``checkpointing`` is the request's "auto" / "on" / "off". With "auto", a job whose
    estimate exceeds :data:`TIGHT_FRACTION` of the budget is made smaller by the measure that
    is cheaper on the device: on a CPU, smaller micro-batches first (each keeps at least
    :data:`MIN_MICRO_TOKENS` tokens; measured a few % slower, while checkpointing cost +58 %
    per step there), then checkpointing; on a GPU, checkpointing first (small micro-batches
    leave it idle). A job over the whole budget then gets smaller micro-batches, down to one
    example; if even that does not fit, ValidationFailed is raised (when ``refuse``).
    """

    def est(size: int, ckpt: bool) -> MemoryEstimate:
        return estimate_memory(
            shape,
            batch_size=size,
            seq_len=seq_len,
            gradient_checkpointing=ckpt,
            device_type=device_type,
            **kwargs,
        )

    notes: list[str] = []
    ckpt = checkpointing == "on"
    size = batch_size
    if checkpointing == "auto" and budget is not None:
        comfortable = TIGHT_FRACTION * budget
        without = est(batch_size, False)
        if without.total > comfortable:
            share = f"{gib(without.total)}, more than {int(TIGHT_FRACTION * 100)}% of the budget"
            smaller = _split_to(est, batch_size, comfortable, max(1, -(-MIN_MICRO_TOKENS // max(1, seq_len))))
            if device_type != "cuda" and smaller is not None:
                size = smaller
                notes.append(f"smaller micro-batches instead of gradient checkpointing: the batch would need {share}")
            else:
                ckpt = True
                notes.append(f"gradient checkpointing on: without it the job would need {share}")
    estimate = est(size, ckpt)
    if budget is not None and estimate.total > budget:
        if checkpointing == "auto" and not ckpt:
            ckpt, size = True, batch_size
            estimate = est(size, ckpt)
            notes.append("gradient checkpointing on: the job would not fit without it")
        size = _split_to(est, size, budget, 1, ckpt) or 1
        estimate = est(size, ckpt)
    if size < batch_size:
        notes.append(
            f"micro-batches of {size} instead of {batch_size} examples (more accumulation, "
            "the same examples per optimizer step)"
        )
    plan = MemoryPlan(estimate, budget, ckpt, size, batch_size, notes)
    if refuse and not plan.fits:
        raise ValidationFailed(
            f"this job would need about {gib(estimate.total)} even one example at a time, more than the "
            f"{gib(budget)} memory budget ({estimate.describe()}); lower max_length, use a smaller base model, "
            "or raise STUDIO_MEMORY_BUDGET_GB if the machine has more memory to give"
        )
    return plan


MIN_MICRO_TOKENS = 512  # below this a CPU micro-batch stops using the matmul units well


def _split_to(est: Any, size: int, limit: float, floor: int, ckpt: bool = False) -> int | None:
    """The largest micro-batch (halving from ``size``, not below ``floor``) whose estimate fits ``limit``."""
    while True:
        if est(size, ckpt).total <= limit:
            return size
        if size <= floor:
            return None
        size = max(floor, -(-size // 2))


def longest_row(lengths: list[int], max_length: int) -> int:
    """The sequence length a micro-batch is padded to at worst."""
    return max(1, min(max_length, max(lengths, default=1)))


def pooled_row(lengths: list[int], units: list[list[int]], max_length: int) -> tuple[int, int]:
    """``(tokens of the largest sequence, window length)`` for a pooled window loss.

    There a micro-batch holds whole sequences, all their windows (``units``: window indices per
    sequence) padded to the longest window, so memory grows with a sequence's windows × the window
    length, while attention reaches across one window only. Counting windows as rows instead
    under-estimated a run by the number of windows per sequence (one killed at 12 GB when the
    estimate said 0.5 GiB).
    """
    window = longest_row(lengths, max_length)
    return max(1, max((len(unit) for unit in units), default=1) * window), window


MMAP_THRESHOLD = 64 << 20  # blocks above this come from mmap (logit chunks); activations from the heap
TRIM_THRESHOLD = 256 << 20  # free heap kept before it is returned to the OS


def tune_allocator(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Let glibc reuse freed activation memory instead of faulting fresh pages in every step.

    A training step allocates and frees gigabytes of activations. Served from fresh mmap
    pages (glibc's start, or any fixed low threshold), every step pays the kernel for page
    faults and zeroing: 20 % of the CPU time on the bench machine. From the heap with a high
    trim threshold, the memory is reused: the same run took 45 % less time (measured, see
    docs/performance.md) for a peak RSS about 1.4x the live tensors (:data:`HEAP_SLACK`).
    No-op outside glibc Linux, or when the operator set ``MALLOC_MMAP_THRESHOLD_``.
    """
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False  # not glibc, or the operator chose (glibc reads the variables at start)
    try:
        libc = ctypes.CDLL("libc.so.6")
        # -3 = M_MMAP_THRESHOLD, -1 = M_TRIM_THRESHOLD (malloc.h)
        return bool(libc.mallopt(-3, int(mmap_threshold))) and bool(libc.mallopt(-1, int(trim_threshold)))
    except (OSError, AttributeError):
        return False


def release_memory() -> bool:
    """Return the heap's free memory to the OS (glibc ``malloc_trim``), e.g. when a run ends.

    :func:`tune_allocator` keeps freed activations for reuse while training; an idle worker
    should not hold them. No-op outside glibc Linux.
    """
    import ctypes
    import gc
    import sys

    gc.collect()
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


LONGEST_ROWS = 64  # rows tokenised (the longest by characters) to find the longest one


def _encode_longest(rows: list[dict[str, Any]], tokenizer: Any, *, task: str, max_length: int, loss_on: str) -> Any:
    """The :data:`LONGEST_ROWS` longest rows by characters, encoded (a long sequence: all its windows)."""
    from studio.training.tokenise import encode_rows

    def chars(row: dict[str, Any]) -> int:
        if "messages" in row:
            return sum(len(str(m.get("content", ""))) + 16 for m in row["messages"])
        return len(str(row.get("text", "")))

    longest = sorted(rows, key=chars, reverse=True)[:LONGEST_ROWS]
    labels = sorted({str(r["label"]) for r in rows if "label" in r}) if task == "classification" else None
    return encode_rows(longest, tokenizer, task=task, max_length=max_length, loss_on=loss_on, labels=labels)


def longest_tokens(rows: list[dict[str, Any]], tokenizer: Any, *, task: str, max_length: int, loss_on: str) -> int:
    """Tokens of the longest row (at most ``max_length``), tokenising only the longest rows by characters."""
    encoded = _encode_longest(rows, tokenizer, task=task, max_length=max_length, loss_on=loss_on)
    return longest_row([len(e["input_ids"]) for e in encoded.examples], max_length)


def longest_pooled_row(rows: list[dict[str, Any]], tokenizer: Any, *, max_length: int, loss_on: str) -> tuple[int, int]:
    """``(seq_len, attention_len)`` of a micro-batch row under a pooled window loss, as the loop plans it.

    A row is a whole sequence's windows: :func:`pooled_row` of the longest sequences (they have the
    most windows). Rows that are not windowed (not a sequence tokenizer) are one example each.
    """
    from studio.training.setup import sequence_units

    encoded = _encode_longest(rows, tokenizer, task="classification", max_length=max_length, loss_on=loss_on)
    lengths = [len(e["input_ids"]) for e in encoded.examples]
    units = sequence_units(encoded.examples)
    if units is None:
        window = longest_row(lengths, max_length)
        return window, window
    return pooled_row(lengths, units, max_length)


def estimate_for_request(request: Any, settings: Any, device: Any, data_path: str | Path, task: str) -> MemoryPlan:
    """The memory plan a worker on ``device`` would make for ``request`` (for ``studio train`` and the UI).

    Resolves the base model (a bundled one is converted once) and tokenises the longest rows;
    never raises for a job that does not fit (``plan.fits`` says so). Under a pooled window loss
    the row is the loop's too: the largest training sequence's windows (:func:`longest_pooled_row`).
    """
    from studio.models.base_models import resolve_base_model
    from studio.training.data import read_jsonl, split_indices
    from studio.training.models import load_tokenizer_for
    from studio.training.precision import choose_precision, precision_cache
    from studio.training.setup import encoder_max_length, pools_windows

    hyper = request.hyper
    base_path = resolve_base_model(request.base_model, settings).path
    shape = ModelShape.from_path(base_path)
    tokenizer = load_tokenizer_for(base_path)
    max_length = encoder_max_length(Path(base_path), hyper.max_length)  # the loop's windows
    rows = read_jsonl(data_path)
    if pools_windows(task, hyper.window_loss):
        train_idx, _ = split_indices(len(rows), hyper.validation_fraction, request.seed)  # the loop plans these
        seq_len, attention_len = longest_pooled_row(
            [rows[i] for i in train_idx], tokenizer, max_length=max_length, loss_on=hyper.loss_on
        )
    else:
        seq_len = attention_len = longest_tokens(
            rows, tokenizer, task=task, max_length=max_length, loss_on=hyper.loss_on
        )
    precision = choose_precision(hyper.precision, device, cache_file=precision_cache(settings))
    return plan_memory(
        shape,
        batch_size=hyper.batch_size,
        seq_len=seq_len,
        attention_len=attention_len,
        budget=memory_budget(settings, device),
        checkpointing=hyper.gradient_checkpointing,
        refuse=False,
        precision=precision.name,
        loss_chunk_tokens=hyper.loss_chunk_tokens,
        lora_rank=int(request.variant_params.get("r", 8)),
        task=task,
        device_type=device.type,
    )
