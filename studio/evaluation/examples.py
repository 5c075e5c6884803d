"""Which rows an evaluation reads, which metrics fit them, and prompt/reference pairs.

A dataset is one of three kinds, from its canonical rows:

- ``classification`` (``{"text", "label"}``): loss of the head, accuracy;
- ``chat`` (``{"messages"}``): response-only loss, exact_match, rouge_l;
- ``text`` (``{"text"}``): loss only (there is no reference answer to generate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import ValidationFailed

FITTING_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("loss", "accuracy"),
    "chat": ("loss", "exact_match", "rouge_l"),
    "text": ("loss",),
}
GENERATION_METRICS = ("exact_match", "rouge_l")


@dataclass(frozen=True)
class GenerationExample:
    """One generate-and-score item: the conversation up to the last assistant turn and that turn."""

    prompt: list[dict[str, str]]
    reference: str


def dataset_kind(rows: list[dict[str, Any]], report: dict[str, Any] | None = None) -> str:
    """``classification``, ``chat`` or ``text`` (the report's task wins for classification)."""
    if (report or {}).get("task") == "classification" or any("label" in row for row in rows):
        return "classification"
    if any("messages" in row for row in rows):
        return "chat"
    return "text"


def fitting_metrics(kind: str) -> tuple[str, ...]:
    """The metrics an evaluation can compute on a dataset of ``kind``."""
    return FITTING_METRICS[kind]


def check_metrics(metrics: list[str], kind: str, dataset_name: str) -> None:
    """Refuse metrics that do not fit the dataset, naming the ones that do."""
    fits = fitting_metrics(kind)
    wrong = [m for m in metrics if m not in fits]
    if not wrong:
        return
    why = {
        "accuracy": "accuracy needs a classification dataset (text + label rows)",
        "exact_match": "exact_match needs chat rows with an assistant answer to compare against",
        "rouge_l": "rouge_l needs chat rows with an assistant answer to compare against",
    }
    reasons = "; ".join(why.get(m, f"{m} does not apply") for m in wrong)
    raise ValidationFailed(f"{reasons}. Dataset {dataset_name} holds {kind} rows, which fit: {', '.join(fits)}")


def read_rows(path: str | Path, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` canonical rows of a stored dataset."""
    from studio.datasets.normalise import read_jsonl

    return read_jsonl(Path(path), limit=limit)


def generation_examples(rows: list[dict[str, Any]]) -> list[GenerationExample]:
    """Split chat rows at their last assistant turn; rows without one are skipped."""
    out = []
    for row in rows:
        messages = row.get("messages") or []
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None or last == 0:
            continue  # nothing to answer, or no prompt to answer it from
        prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:last]]
        out.append(GenerationExample(prompt=prompt, reference=messages[last]["content"]))
    return out


def prompt_text(messages: list[dict[str, str]]) -> str:
    """The user-visible prompt of a sample: its turns, one per line (for the result samples)."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
