"""Which dataset format a file is in, and which of its columns feed which canonical field.

A *mapping* goes from canonical field names (:data:`CANONICAL_FIELDS`) to the user's
column names. Files whose columns name a format exactly (``instruction``/``output``,
``messages``, ...) are detected with confidence 1. Anything else gets a *proposal*
that the user must confirm by passing the mapping explicitly: guessing silently which
column is the prompt would train the wrong thing without anyone noticing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from studio.datasets import json_limits

CANONICAL_FIELDS = (
    "instruction",
    "input",
    "output",
    "messages",
    "conversations",
    "prompt",
    "completion",
    "text",
    "label",
)


@dataclass(frozen=True)
class FormatSpec:
    """A source format: its task and the canonical fields it needs."""

    name: str
    task: str  # "causal-lm" or "classification"
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()

    @property
    def fields(self) -> tuple[str, ...]:
        return self.required + self.optional


# Dict order is the detection priority when several formats could apply.
FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec("chat", "causal-lm", ("messages",)),
        FormatSpec("sharegpt", "causal-lm", ("conversations",)),
        FormatSpec("alpaca", "causal-lm", ("instruction", "output"), ("input",)),
        FormatSpec("prompt_completion", "causal-lm", ("prompt", "completion")),
        FormatSpec("classification", "classification", ("text", "label")),
        FormatSpec("text", "causal-lm", ("text",)),
    )
}

# Column names that suggest a role, best first; used only for proposals.
PROMPT_NAMES = ("prompt", "question", "query", "input", "source", "src", "mr", "context", "problem", "request")
COMPLETION_NAMES = ("completion", "answer", "response", "output", "target", "tgt", "ref", "reference", "reply")
COMPLETION_NAMES += ("solution", "summary")
TEXT_NAMES = ("text", "sentence", "sequence", "content", "review", "document", "body", "seq", "utterance")
TEXT_NAMES += ("tweet", "comment", "passage", "question", "sentence1")
LABEL_NAMES = ("label", "labels", "class", "category", "sentiment", "target", "y", "label_id", "label_name")
# Pairs whose meaning is unmistakable get a high proposal confidence.
STRONG_PAIRS = {("question", "answer"), ("prompt", "response"), ("query", "response"), ("input", "output")}
STRONG_PAIRS |= {("source", "target"), ("problem", "solution"), ("question", "response")}

TURN_KEYS = {"chat": {"role", "content"}, "sharegpt": {"from", "value"}}

_INT_STRING = re.compile(r"^\s*-?\d+\s*$")


def task_of(format_name: str) -> str:
    """ "causal-lm" or "classification" for a format name."""
    return FORMATS[format_name].task


@dataclass
class Detection:
    """The outcome of format detection, or of checking a mapping the user gave."""

    format: str | None
    mapping: dict[str, str]
    confidence: float
    needs_confirmation: bool
    reason: str
    ignored_columns: list[str] = field(default_factory=list)
    # A column of DNA/RNA/protein sequences and the tokenizer proposed for it
    # (studio.sequences.alphabet.SequenceColumn as a dict), or None.
    sequence: dict[str, Any] | None = None

    @property
    def task(self) -> str | None:
        return task_of(self.format) if self.format else None

    @property
    def sequence_kind(self) -> str | None:
        """``dna``, ``rna`` or ``protein`` when a column holds biological sequences."""
        return self.sequence["kind"] if self.sequence else None

    def map_flags(self) -> str:
        """The mapping spelled as CLI options, e.g. ``--map prompt=question --map completion=answer``."""
        return " ".join(f"--map {key}={value}" for key, value in self.mapping.items())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "task": self.task, "sequence_kind": self.sequence_kind}


def refusal_message(columns: list[str], detection: Detection) -> str:
    """The one-line error for a file whose format needs the user's confirmation."""
    names = ", ".join(columns)
    if detection.format is None:
        fields = ", ".join(CANONICAL_FIELDS)
        return (
            f"columns {names} do not name a format and no mapping could be proposed; re-run with "
            f"--map FIELD=COLUMN for the fields of one format ({fields})"
        )
    return (
        f"columns {names} do not name a format; re-run with {detection.map_flags()} "
        f"(proposed: {detection.format}, confidence {detection.confidence:.2f})"
    )


# Column profiling -------------------------------------------------------------------


@dataclass
class _Column:
    """What a sample of a column's values looks like."""

    name: str
    values: list[Any]

    def share(self, predicate) -> float:
        return sum(1 for v in self.values if predicate(v)) / len(self.values) if self.values else 0.0

    @property
    def textual(self) -> bool:
        """Mostly strings that are not just integers in disguise (CSV labels)."""
        return self.share(lambda v: isinstance(v, str) and not _INT_STRING.match(v)) >= 0.9

    @property
    def mean_length(self) -> float:
        strings = [v for v in self.values if isinstance(v, str)]
        return sum(map(len, strings)) / len(strings) if strings else 0.0

    @property
    def label_like(self) -> bool:
        """Integers, or a few short distinct strings: what class labels look like."""
        if not self.values:
            return False
        ints = self.share(lambda v: (isinstance(v, int) and not isinstance(v, bool)) or _is_int_string(v))
        if ints >= 0.9:
            return True
        hashable = [v for v in self.values if isinstance(v, str)]
        distinct = len(set(hashable))
        return self.textual and self.mean_length < 40 and distinct <= max(2, min(50, len(self.values) // 2))

    def item_keys(self) -> set[str]:
        """Keys of the objects inside list values (after parsing JSON text, as CSV cells hold it)."""
        keys: set[str] = set()
        for value in self.values:
            if isinstance(value, str) and value.lstrip().startswith("["):
                try:
                    value = json_limits.loads(value)
                except ValueError:  # not JSON, or a value validation will refuse
                    continue
            if isinstance(value, list):
                for item in value[:4]:
                    if isinstance(item, dict):
                        keys.update(str(k) for k in item)
        return keys


def _is_int_string(value: Any) -> bool:
    return isinstance(value, str) and bool(_INT_STRING.match(value))


def _profile(columns: list[str], samples: list[dict]) -> dict[str, _Column]:
    return {c: _Column(c, [s[c] for s in samples if s.get(c) is not None]) for c in columns}


# Detection --------------------------------------------------------------------------


def detect_format(columns: list[str], samples: list[dict]) -> Detection:
    """Detect the format from column names, or propose a mapping from names and sample values.

    ``samples`` are parsed records (a few hundred are plenty). The result has
    ``needs_confirmation`` set when the columns do not name a format by themselves, and
    ``sequence`` set when a column holds DNA/RNA/protein sequences (see :func:`add_sequence_column`).
    """
    return add_sequence_column(_detect_format(columns, samples), columns, samples)


def add_sequence_column(detection: Detection, columns: list[str], samples: list[dict]) -> Detection:
    """Set ``detection.sequence`` from the samples: the mapped text column is checked first."""
    from studio.sequences.alphabet import detect_sequence_column

    found = detect_sequence_column(columns, samples, prefer=detection.mapping.get("text"))
    detection.sequence = {**asdict(found), "description": found.describe()} if found else None
    return detection


def _detect_format(columns: list[str], samples: list[dict]) -> Detection:
    cols = _profile(columns, samples)
    names = set(columns)

    def found(fmt: str, mapping: dict[str, str], confidence: float, reason: str, confirm: bool) -> Detection:
        ignored = [c for c in columns if c not in mapping.values()]
        return Detection(fmt, mapping, confidence, confirm, reason, ignored)

    for column, own, other in (("messages", "chat", "sharegpt"), ("conversations", "sharegpt", "chat")):
        if column in names:
            keys = cols[column].item_keys()
            own_keys, other_keys = TURN_KEYS[own], TURN_KEYS[other]
            # A "messages" column of from/value turns is ShareGPT under another name (and vice versa).
            if other_keys <= keys and not own_keys <= keys:
                other_field = FORMATS[other].required[0]
                reason = f"column {column!r} holds {'/'.join(sorted(other_keys))} turns, as {other} does"
                return found(other, {other_field: column}, 0.8, reason, True)
            return found(own, {FORMATS[own].required[0]: column}, 1.0, f"column {column!r} names {own}", False)
    if {"instruction", "output"} <= names:
        mapping = {"instruction": "instruction", "input": "input", "output": "output"}
        if "input" not in names:
            del mapping["input"]  # input is optional in alpaca
        return found("alpaca", mapping, 1.0, "columns instruction/output name alpaca", False)
    if {"prompt", "completion"} <= names:
        return found("prompt_completion", {"prompt": "prompt", "completion": "completion"}, 1.0,
                     "columns prompt/completion name prompt_completion", False)  # fmt: skip
    if "label" in names and ({"text", "sentence"} & names):
        text = "text" if "text" in names else "sentence"
        confidence = 1.0 if text == "text" else 0.95
        return found("classification", {"text": text, "label": "label"}, confidence,
                     f"columns {text}/label name classification", False)  # fmt: skip
    if "text" in names:
        return found("text", {"text": "text"}, 1.0, "column 'text' names the text format", False)
    return _propose(columns, cols, found)


def _propose(columns: list[str], cols: dict[str, _Column], found) -> Detection:
    """Best guess for columns that do not name a format; always needs confirmation."""
    # Lists of turns under another name.
    for column in columns:
        keys = cols[column].item_keys()
        if {"role", "content"} <= keys:
            return found("chat", {"messages": column}, 0.8, f"column {column!r} holds role/content turns", True)
        if {"from", "value"} <= keys:
            reason = f"column {column!r} holds from/value turns"
            return found("sharegpt", {"conversations": column}, 0.8, reason, True)
    textual = [c for c in columns if cols[c].textual]
    # Named prompt/completion columns may hold short numbers as text ("4" answers a sum).
    strings = [c for c in columns if cols[c].share(lambda v: isinstance(v, str)) >= 0.9]
    completion = _first_named(COMPLETION_NAMES, strings)
    if "instruction" in strings and completion and completion != "instruction":
        others = [c for c in strings if c not in (completion, "instruction")]
        extra = _first_named(("input", "context"), others)
        mapping = {"instruction": "instruction", **({"input": extra} if extra else {}), "output": completion}
        return found("alpaca", mapping, 0.8, f"instruction with {completion!r} as the output", True)
    prompt = _first_named(PROMPT_NAMES, [c for c in strings if c != completion])
    if prompt and completion:
        confidence = 0.9 if (prompt.lower(), completion.lower()) in STRONG_PAIRS else 0.6
        reason = f"{prompt!r} reads like a prompt and {completion!r} like its completion"
        return found("prompt_completion", {"prompt": prompt, "completion": completion}, confidence, reason, True)
    labels = [c for c in columns if cols[c].label_like]
    label = _first_named(LABEL_NAMES, labels)
    if label:
        texts = [c for c in textual if c != label]
        text = _first_named(TEXT_NAMES, texts)
        confidence = 0.7 if text else 0.5
        text = text or max(texts, key=lambda c: cols[c].mean_length, default=None)
        if text:
            reason = f"{label!r} looks like class labels and {text!r} like the text to classify"
            return found("classification", {"text": text, "label": label}, confidence, reason, True)
    if textual:
        text = _first_named(TEXT_NAMES, textual)
        if text or len(textual) == 1:
            text = text or textual[0]
            return found("text", {"text": text}, 0.5, f"{text!r} is the only text-like column", True)
        first, second = textual[:2]
        reason = f"guessing the first two text columns {first!r} and {second!r} as prompt and completion"
        return found("prompt_completion", {"prompt": first, "completion": second}, 0.3, reason, True)
    return Detection(None, {}, 0.0, True, "no column holds text", list(columns))


def _first_named(preferred: Iterable[str], available: list[str]) -> str | None:
    """The available column whose (case-insensitive) name comes first in ``preferred``."""
    by_lower = {c.lower(): c for c in reversed(available)}
    return next((by_lower[name] for name in preferred if name in by_lower), None)
