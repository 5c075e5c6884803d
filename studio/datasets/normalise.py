"""The canonical JSONL that training reads, and how validated rows become it.

The contract (one JSON object per line, UTF-8, ``\\n`` line ends):

* causal-LM formats (alpaca, chat, sharegpt, prompt_completion)::

    {"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}

  alpaca: user = instruction, plus ``"\\n\\n" + input`` when input is not blank;
  assistant = output. prompt_completion: user = prompt, assistant = completion.
* text: ``{"text": str}``
* classification: ``{"text": str, "label": int | str}`` (the label as given).

Texts are never stripped or otherwise edited: what the user uploaded is what trains.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any

from studio.errors import NotFoundError


def to_canonical(format_name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Build one canonical row from the cleaned fields that validation returned."""
    if format_name == "alpaca":
        user = fields["instruction"]
        if fields.get("input", "").strip():
            user = f"{user}\n\n{fields['input']}"
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": fields["output"]}]}
    if format_name in ("chat", "sharegpt"):
        # validation already mapped sharegpt's human/gpt roles onto user/assistant
        return {"messages": [{"role": t["role"], "content": t["content"]} for t in fields["messages"]]}
    if format_name == "prompt_completion":
        return {
            "messages": [
                {"role": "user", "content": fields["prompt"]},
                {"role": "assistant", "content": fields["completion"]},
            ]
        }
    if format_name == "text":
        return {"text": fields["text"]}
    if format_name == "classification":
        return {"text": fields["text"], "label": fields["label"]}
    raise ValueError(f"unknown dataset format {format_name!r}")


def label_summary(rows: Iterable[dict[str, Any]]) -> tuple[list[Any], list[dict[str, Any]]]:
    """Sorted label set and per-label counts (as a list, so integer labels stay integers in JSON)."""
    counts = Counter(row["label"] for row in rows)
    # Integers sort before strings, so a mixed set still has a stable order.
    labels = sorted(counts, key=lambda v: (isinstance(v, str), v))
    return labels, [{"label": label, "count": counts[label]} for label in labels]


# Characters that JSON leaves raw in a string but that str.splitlines() (and JavaScript) take for line
# breaks: written as escapes so that every reader sees one row per line. json.dumps already escapes the
# other splitlines() breaks (all below U+0020).
_LINE_BREAK_ESCAPES = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def jsonl_line(row: dict[str, Any]) -> str:
    """One row as a line of canonical JSONL (UTF-8 text kept readable, line-break characters escaped)."""
    return json.dumps(row, ensure_ascii=False).translate(_LINE_BREAK_ESCAPES) + "\n"


def write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> int:
    """Write rows as canonical JSONL; returns how many were written."""
    count = 0
    with Path(path).open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(jsonl_line(row))
            count += 1
    return count


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Read canonical rows back (the first ``limit`` when given)."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"the normalised data file {path} is missing; delete the dataset and add it again")
    with path.open(encoding="utf-8") as handle:
        lines = (line for line in handle if line.strip())
        return [json.loads(line) for line in islice(lines, limit)]
