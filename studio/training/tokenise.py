"""Rows of the canonical JSONL -> token ids and labels.

Chat rows (``{"messages": [...]}``) are rendered with the base tokenizer's chat
template. With ``loss_on="response"`` only the assistant turns (including the
template's end-of-turn marker, so the model learns to stop) carry labels; every
other token is -100. Labels are located by rendering each conversation prefix
with ``add_generation_prompt=True`` and mapping character spans to tokens through
the fast tokenizer's offsets, so they are right for any prefix-stable template.

Plain text rows (``{"text": ...}``) are trained on every token, followed by EOS.
Classification rows (``{"text", "label"}``) become ``input_ids`` + a label index. With a sequence
tokenizer (a base model pre-trained by the studio on DNA/RNA/protein, see :mod:`studio.sequences`)
a long sequence is not cut: it becomes overlapping windows of ``max_length`` tokens, each an
example with its sequence's label and ``"sequence"`` (the row's index), so that predictions can be
pooled per sequence (:mod:`studio.sequences.windows`).

Tokenizers without a chat template get :data:`FALLBACK_CHAT_TEMPLATE`::

    <|system|>\\n{content}{eos}\\n<|user|>\\n{content}{eos}\\n<|assistant|>\\n{content}{eos}\\n

Rows longer than ``max_length`` are cut at the end (counted as truncated); a row
left without any labelled token is dropped (counted too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from studio.errors import ValidationFailed
from studio.sequences.windows import encode_windows, is_sequence_tokenizer, overlap_of

IGNORE_INDEX = -100

FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass
class Encoded:
    """Tokenised rows, ready for batching, plus what happened on the way."""

    examples: list[dict[str, Any]]  # {"input_ids": list[int], "labels": list[int] | int}
    truncated: int = 0
    dropped: int = 0
    dropped_indices: list[int] = field(default_factory=list)
    unknown_tokens: int = 0  # text tokens the tokenizer could only map to its unknown token
    text_tokens: int = 0  # all tokens that are not special (bos/eos/pad/cls/sep)
    unknown_rows: int = 0  # rows whose text became nothing but unknown tokens

    @property
    def unknown_share(self) -> float:
        return self.unknown_tokens / self.text_tokens if self.text_tokens else 0.0

    def example_rows(self) -> list[int]:
        """The index (among the encoded rows) of the row each example came from.

        A windowed sequence gives several examples (they carry ``sequence``); any other row one,
        unless it was dropped.
        """
        if self.examples and "sequence" in self.examples[0]:
            return [int(e["sequence"]) for e in self.examples]
        dropped = set(self.dropped_indices)
        kept = (i for i in range(len(self.examples) + len(dropped)) if i not in dropped)
        return list(kept)


# A row whose text the tokenizer cannot read at all carries no information; when most rows are
# like that, training would only learn the label frequencies, so the run is refused.
UNKNOWN_ROWS_REFUSE = 0.5
UNKNOWN_TOKENS_WARN = 0.05


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give ``tokenizer`` the fallback template when it has none; True if the fallback was set."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return True


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


def response_spans(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of every assistant turn (with end marker)."""
    text = _render(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], True) if i else ""
        upto = _render(tokenizer, messages[: i + 1], False)
        if i and text.startswith(prompt) and text.startswith(upto) and len(upto) > len(prompt):
            start, end = len(prompt), len(upto)
        else:
            # A template that is not prefix-stable: fall back to the content's own characters.
            start = text.find(message["content"], cursor)
            if start < 0:
                continue
            end = start + len(message["content"])
        spans.append((start, end))
        cursor = end
    return text, spans


def _label_tokens(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Which tokens lie inside one of the character spans (a token counts if it starts inside)."""
    marks = []
    for start, end in offsets:
        marks.append(any(s <= start < e or (start == end and s < start <= e) for s, e in spans))
    return marks


def encode_chat(tokenizer: Any, messages: Sequence[dict[str, str]], loss_on: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation; labels -100 outside assistant turns unless loss_on='full'."""
    text, spans = response_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if loss_on == "full":
        return ids, list(ids)
    marks = _label_tokens(enc["offset_mapping"], spans)
    return ids, [t if m else IGNORE_INDEX for t, m in zip(ids, marks, strict=True)]


def encode_text(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a plain text row: every token is learned, EOS appended."""
    ids = list(tokenizer(text)["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return ids, list(ids)


def label_index(labels: Sequence[Any]) -> Callable[[Any], int]:
    """Map a row's label (int or str, as in the dataset report) to its class index."""
    table = {str(label): i for i, label in enumerate(labels)}

    def index(value: Any) -> int:
        try:
            return table[str(value)]
        except KeyError:
            raise ValueError(f"label {value!r} is not one of the dataset's labels {list(labels)}") from None

    return index


def encode_rows(
    rows: Sequence[dict[str, Any]],
    tokenizer: Any,
    *,
    task: str,
    max_length: int,
    loss_on: str = "response",
    labels: Sequence[Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> Encoded:
    """Tokenise canonical rows for ``task``; truncates at ``max_length`` and reports counts via ``log``."""
    out = Encoded(examples=[])
    to_index = label_index(labels or []) if task == "classification" else None
    has_chat = task != "classification" and any("messages" in row for row in rows)
    unknown_ids = _unknown_ids(tokenizer)
    if task == "classification" and is_sequence_tokenizer(tokenizer):
        return _encode_windowed(rows, tokenizer, max_length, to_index, unknown_ids, log)
    if has_chat and ensure_chat_template(tokenizer) and log:
        log("the tokenizer has no chat template; using the studio's simple fallback template")
    for i, row in enumerate(rows):
        if task == "classification":
            ids = list(tokenizer(row["text"])["input_ids"])
            target: Any = to_index(row["label"])
        elif "messages" in row:
            ids, target = encode_chat(tokenizer, row["messages"], loss_on)
        else:
            ids, target = encode_text(tokenizer, row["text"])
        if len(ids) > max_length:
            out.truncated += 1
            ids = ids[:max_length]
            if isinstance(target, list):
                target = target[:max_length]
        if isinstance(target, list) and all(t == IGNORE_INDEX for t in target[1:]):
            # Nothing left to learn from (the response was cut off): the row would only add noise.
            out.dropped += 1
            out.dropped_indices.append(i)
            continue
        out.examples.append({"input_ids": ids, "labels": target})
        _count_unknown(out, ids, unknown_ids)
    _check_unknown(out, tokenizer, len(rows), log)
    if log and (out.truncated or out.dropped):
        log(
            f"{out.truncated} of {len(rows)} rows were longer than {max_length} tokens and were truncated; "
            f"{out.dropped} rows had no response tokens left and were skipped"
        )
    return out


def _encode_windowed(
    rows: Sequence[dict[str, Any]],
    tokenizer: Any,
    max_length: int,
    to_index: Callable[[Any], int] | None,
    unknown_ids: tuple[int, set[int]] | None,
    log: Callable[[str], None] | None,
) -> Encoded:
    """Classification rows of sequences as overlapping windows, each with its row's label, index and weight.

    Each window's loss weight is ``1 / (windows of its sequence)``, rescaled so that the weights
    average 1 over the set (:func:`sequence_weights`): every *sequence* counts once in the loss,
    however long it is. Without it, a class of longer sequences (mRNAs against lncRNAs) owns most
    windows and a weak classifier learns that window prior: on lncRNA data 69 % of the windows were
    mRNA and every test sequence was predicted mRNA. Weighting is chosen over a loss on the pooled
    (per-sequence mean) logits because it keeps windows independent examples: batches, length
    grouping, memory planning and gradient accumulation work unchanged, and a sequence of 50 windows
    never has to fit in one micro-batch. Sampling windows uniformly, the weighted mean loss is an
    unbiased estimate of the mean per-sequence loss (the mean of its windows' losses). The loss on
    pooled logits is the option ``window_loss`` (pooled_mean / pooled_max / pooled_sum): the run then batches whole
    sequences from the ``sequence`` index written here (:class:`studio.training.setup.RunSetup`).
    """
    out = Encoded(examples=[])
    assert to_index is not None
    long_rows = 0
    per_row = [encode_windows(tokenizer, row["text"], max_length) for row in rows]
    weights = sequence_weights([len(w) for w in per_row])
    for i, (row, windows) in enumerate(zip(rows, per_row, strict=True)):
        target = to_index(row["label"])
        long_rows += len(windows) > 1
        for ids in windows:
            out.examples.append({"input_ids": ids, "labels": target, "sequence": i, "weight": weights[i]})
            _count_unknown(out, ids, unknown_ids)
    _check_unknown(out, tokenizer, len(rows), log)
    if log and long_rows:
        log(
            f"{long_rows} of {len(rows)} sequences are longer than {max_length} tokens: read whole as "
            f"{len(out.examples)} overlapping windows in all (overlap {overlap_of(tokenizer)} tokens), "
            "predictions pooled per sequence (the windows' logits averaged, or log-sum-exp pooled with "
            "window_loss pooled_max); with the per-window loss each window's loss is weighted by "
            "1 / (windows of its sequence), so that every sequence counts once"
        )
    return out


def sequence_weights(window_counts: Sequence[int]) -> list[float]:
    """Per-sequence window weight ``1 / n_windows``, scaled so that the weights of all windows average 1.

    The scale (windows / sequences) keeps the loss on the usual per-example scale (a step's loss is
    still divided by its number of windows), so learning rates mean what they meant unweighted.
    """
    total = sum(window_counts)
    if not total:
        return [1.0] * len(window_counts)
    scale = total / sum(1 for n in window_counts if n)
    return [scale / n if n else 0.0 for n in window_counts]


def _unknown_ids(tokenizer: Any) -> tuple[int, set[int]] | None:
    """(the unknown token's id, the other special ids), or None for tokenizers without one."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return None  # no unknown token at all (byte-level BPE such as GPT-2's reads any text)
    return unk, set(getattr(tokenizer, "all_special_ids", []) or []) - {unk}


def _count_unknown(out: Encoded, ids: Sequence[int], unknown_ids: tuple[int, set[int]] | None) -> None:
    if unknown_ids is None:
        return
    unk, special = unknown_ids
    text = [t for t in ids if t not in special]
    unknown = sum(1 for t in text if t == unk)
    out.text_tokens += len(text)
    out.unknown_tokens += unknown
    if text and unknown == len(text):
        out.unknown_rows += 1


def _check_unknown(out: Encoded, tokenizer: Any, n_rows: int, log: Callable[[str], None] | None) -> None:
    """Refuse data the tokenizer cannot read; warn when a noticeable share of it is unknown."""
    if not out.unknown_tokens:
        return
    name = getattr(tokenizer, "name_or_path", "") or "this base model"
    why = (
        "BERT-style tokenizers turn any word longer than 100 characters (a DNA or protein sequence, a URL, "
        "a base64 blob) into a single unknown token"
    )
    if n_rows and out.unknown_rows / n_rows >= UNKNOWN_ROWS_REFUSE:
        raise ValidationFailed(
            f"the tokenizer of {name} cannot read this data: {out.unknown_rows} of {n_rows} rows became nothing "
            f"but its unknown token ({why}). Train on a base model whose tokenizer reads any text, such as the "
            "bundled smollm2-135m-instruct, or split the text into shorter words (e.g. k-mers separated by spaces)."
        )
    if log and out.unknown_share >= UNKNOWN_TOKENS_WARN:
        log(
            f"warning: {out.unknown_share:.0%} of the text tokens are unknown to the tokenizer of {name} "
            f"({out.unknown_rows} rows entirely); {why}. The model cannot learn from those parts."
        )
