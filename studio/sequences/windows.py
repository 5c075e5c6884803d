"""Long sequences read whole: overlapping windows of a model's length, and logits pooled per sequence.

A transcript of 10,000 nucleotides does not fit a 512-token encoder. Instead of cutting it at its
first tokens, the token sequence (without ``[CLS]``/``[SEP]``) is split into windows of
``size - 2`` tokens that start every ``stride = size - 2 - overlap`` tokens, the last one aligned
to the end so that nothing is left out; each window gets its own ``[CLS] … [SEP]``. Every token
(hence, for overlapping k-mers, every nucleotide) lies in at least one window; neighbouring windows
share ``overlap`` tokens (the last pair may share more, since the last window is end-aligned).

Classification trains on the windows. By default (``window_loss="per_window"``) each window is
labelled with its sequence's label, and a sequence's prediction is the **mean of its windows'
logits** (:func:`pool_logits`): every window votes with its confidence, no window is privileged,
and a single window reduces to the plain classifier. With ``window_loss="pooled_mean"``,
``"pooled_max"`` or ``"pooled_sum"`` the windows of a sequence travel in one micro-batch, their logits
are pooled (mean, a smooth max: log-sum-exp, or a sum) and the loss is applied once per sequence, so a
label that only one window supports is learnt (multiple-instance learning); evaluation pools the same way
(:func:`saved_pooling`). Evaluation reports both levels: accuracy per window and per sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Tokens shared by neighbouring windows unless the base model says otherwise (a k-mer or a codon
# at a window's edge is then read with context in the next window).
DEFAULT_OVERLAP = 64
SPECIALS_PER_WINDOW = 2  # [CLS] and [SEP]


def window_spans(n_tokens: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """``[start, end)`` token spans of windows of ``size`` tokens sharing ``overlap`` with the next.

    Windows start every ``size - overlap`` tokens; the last one ends at ``n_tokens`` (it starts
    earlier if need be, so it is full length whenever the sequence is). A sequence no longer than
    ``size`` is one window; an empty one is one empty window.
    """
    if size < 1:
        raise ValueError(f"a window holds at least one token, not {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"the overlap must be at least 0 and below the window size {size}, not {overlap}")
    if n_tokens <= size:
        return [(0, n_tokens)]
    stride = size - overlap
    spans = []
    start = 0
    while start + size < n_tokens:
        spans.append((start, start + size))
        start += stride
    spans.append((n_tokens - size, n_tokens))
    return spans


def overlap_of(tokenizer: Any) -> int:
    """The window overlap saved with a sequence tokenizer (``window_overlap``), else the default."""
    value = getattr(tokenizer, "init_kwargs", {}).get("window_overlap")
    return int(value) if value is not None else DEFAULT_OVERLAP


def is_sequence_tokenizer(tokenizer: Any) -> bool:
    """True for the tokenizers of :mod:`studio.sequences.tokenizers` (they record ``sequence_kind``)."""
    return bool(getattr(tokenizer, "init_kwargs", {}).get("sequence_kind"))


def encode_windows(tokenizer: Any, sequence: str, max_length: int, overlap: int | None = None) -> list[list[int]]:
    """The token ids of each window of ``sequence``: ``[CLS] window [SEP]``, at most ``max_length`` each.

    The sequence is prepared for the tokenizer first (spaced k-mers for a k-mer tokenizer). A codon
    tokenizer reads the sequence once per reading frame: the windows of frame 0, then of frame 1, then
    of frame 2, all of them the sequence's (pooled together like any other windows of one sequence).
    ``overlap`` (tokens) defaults to the tokenizer's own (``window_overlap``, saved by the pre-training
    job from its request). A chosen overlap (given here or saved) is honoured up to one token short of
    the window; only the library default (:data:`DEFAULT_OVERLAP`, when nothing was chosen) is cut to
    half a window, so that a small window does not silently turn into one window per token.
    """
    from studio.sequences.tokenizers import reading_frame_texts

    body = max(1, max_length - SPECIALS_PER_WINDOW)
    chosen = overlap is not None or getattr(tokenizer, "init_kwargs", {}).get("window_overlap") is not None
    wanted = overlap_of(tokenizer) if overlap is None else overlap
    shared = min(wanted, body - 1) if chosen else min(wanted, body // 2)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    windows = []
    for text in reading_frame_texts(tokenizer, sequence):
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        windows += [[cls, *ids[start:end], sep] for start, end in window_spans(len(ids), body, shared)]
    return windows


POOLINGS = ("mean", "max", "sum")  # how a sequence's windows' logits become its logits


def pool_rows(logits: Any, index: Any, n_groups: int, how: str = "mean") -> Any:
    """Per-group logits (``n_groups`` × classes) from per-row ``logits``; row ``i`` belongs to group ``index[i]``.

    ``mean``: the mean of the rows' logits. ``max``: a smooth maximum per class, the log-sum-exp of
    the rows' logits (a constant ``log n`` apart from it, which a softmax over the classes ignores), so a
    class that one window supports strongly wins even if the other windows do not see it. ``sum``: the sum
    of the rows' logits, so evidence ADDS UP over windows: a class that many windows support (a long coding
    stretch seen by several overlapping windows) gains with each of them, where the smooth max saturates
    after the first few, and the head's bias counts once per window (a term in the sequence's length).
    Differentiable: the training loss on pooled logits goes through here.
    """
    import torch

    if how not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {how!r}")
    index = torch.as_tensor(index, dtype=torch.long, device=logits.device)
    classes = logits.shape[-1]
    rows = index.unsqueeze(-1).expand(-1, classes)
    if how in ("mean", "sum"):
        sums = logits.new_zeros(n_groups, classes).index_add(0, index, logits)
        if how == "sum":
            return sums
        counts = torch.bincount(index, minlength=n_groups).clamp(min=1).unsqueeze(-1)
        return sums / counts.to(logits.dtype)
    # log Σ exp(z) = m + log Σ exp(z − m), with m each group's maximum (held constant: no gradient needed)
    top = logits.new_full((n_groups, classes), float("-inf"))
    top = top.scatter_reduce(0, rows, logits.detach(), reduce="amax", include_self=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    sums = logits.new_zeros(n_groups, classes).index_add(0, index, torch.exp(logits - top[index]))
    return top + torch.log(sums.clamp(min=torch.finfo(logits.dtype).tiny))


def pool_logits(logits: Any, sequence_ids: Sequence[int], how: str = "mean") -> tuple[list[int], Any]:
    """``(sequence ids in first-seen order, their pooled logits)`` from per-window ``logits`` (n × classes).

    ``sequence_ids[i]`` names the sequence window ``i`` belongs to; ``how`` is a :data:`POOLINGS` name.
    """
    import torch

    logits = torch.as_tensor(logits, dtype=torch.float32)
    order = list(dict.fromkeys(int(s) for s in sequence_ids))
    position = {s: i for i, s in enumerate(order)}
    index = torch.tensor([position[int(s)] for s in sequence_ids], dtype=torch.long)
    return order, pool_rows(logits, index, len(order), how)


def pooling_for(window_loss: str | None) -> str:
    """The pooling of a training's ``window_loss`` setting (``pooled_max`` → max, ``pooled_sum`` → sum; else mean)."""
    return {"pooled_max": "max", "pooled_sum": "sum"}.get(window_loss or "", "mean")


def saved_pooling(adapter_dir: Any) -> str:
    """How an adapter's windows are pooled at evaluation: as it was trained (its reproducibility.json), else mean."""
    import json
    from pathlib import Path

    path = Path(adapter_dir) / "reproducibility.json"
    try:
        hyper = json.loads(path.read_text())["request"]["hyper"]
    except (OSError, ValueError, KeyError, TypeError):
        return "mean"
    return pooling_for(hyper.get("window_loss") if isinstance(hyper, dict) else None)
