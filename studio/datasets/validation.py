"""Check every row of a file against its format; collect exact, countable problems.

A problem names the row (1-based, as a person counts lines or records in the file),
the field (the user's column name; turns as ``messages[2].content``, 0-based like a
JSON path) and a reason code from :data:`REASONS`. Valid rows come back as cleaned
canonical field values for :mod:`studio.datasets.normalise`. Nothing is dropped here:
the caller decides, and only when the user asked for it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from studio.datasets import json_limits
from studio.datasets.json_limits import MAX_INT_DIGITS, JsonRefused, format_path
from studio.datasets.readers import RawRecord, RawTable

DEFAULT_MAX_ROW_CHARS = 100_000
PROBLEMS_STORED = 1000  # the report keeps this many problems; counts stay complete

REASONS = {
    "unparseable": "the line or record could not be parsed",
    "missing": "a required field is missing or null",
    "empty": "a required text is empty",
    "wrong_type": "a field has the wrong type",
    "too_long": "the row is over the length limit",
    "no_assistant_turn": "a conversation has no assistant turn",
    "bad_role": "a turn has a role that is not allowed",
    "too_deep": "a value is nested deeper than the limit",
    "number_too_long": "an integer has more digits than can be read",
    "invalid_unicode": "a text holds a lone surrogate, which is not valid Unicode",
}
CHAT_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_NUMBER = re.compile(r"^\s*-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one row."""

    row: int
    field: str
    reason: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"row {self.row} {self.field}: {self.detail}"


@dataclass
class ValidationResult:
    """Valid rows as ``(row number, canonical fields)`` and every problem found."""

    rows_total: int
    valid: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def invalid_rows(self) -> list[int]:
        return sorted({p.row for p in self.problems})

    @property
    def counts_by_reason(self) -> dict[str, int]:
        return dict(Counter(p.reason for p in self.problems).most_common())

    def summary(self, limit: int = 5) -> str:
        """One line: how many rows are bad, why, and the first ``limit`` problems."""
        invalid = len(self.invalid_rows)
        counts = ", ".join(f"{reason}: {count}" for reason, count in self.counts_by_reason.items())
        first = "; ".join(str(p) for p in self.problems[:limit])
        more = f"; and {len(self.problems) - limit} more" if len(self.problems) > limit else ""
        return f"{invalid} of {self.rows_total} rows are invalid ({counts}): {first}{more}"

    def report(self) -> dict[str, Any]:
        """The validation part of a dataset report (problem list capped, counts complete)."""
        return {
            "rows_total": self.rows_total,
            "rows_valid": len(self.valid),
            "rows_invalid": len(self.invalid_rows),
            "problems": [p.to_dict() for p in self.problems[:PROBLEMS_STORED]],
            "problems_truncated": len(self.problems) > PROBLEMS_STORED,
            "counts_by_reason": self.counts_by_reason,
        }


def validate_rows(
    table: RawTable, format_name: str, mapping: Mapping[str, str], max_chars: int | None = DEFAULT_MAX_ROW_CHARS
) -> ValidationResult:
    """Validate every record of ``table`` as ``format_name`` read through ``mapping``.

    ``max_chars`` limits the characters of one row; None checks no length.
    """
    tabular = table.file_format in ("csv", "tsv")
    numeric_labels = tabular and format_name == "classification" and _all_numeric(table, mapping["label"])
    result = ValidationResult(rows_total=len(table.records))
    for record in table.records:
        checker = _RowChecker(record, mapping, tabular, numeric_labels)
        fields = checker.check(format_name, max_chars)
        if checker.problems:
            result.problems.extend(checker.problems)
        else:
            result.valid.append((record.row, fields))
    return result


def _all_numeric(table: RawTable, column: str) -> bool:
    """CSV/TSV cells are all text; a label column of numbers there means numeric labels."""
    values = [r.data.get(column, "") for r in table.records if isinstance(r.data, dict)]
    values = [v for v in values if isinstance(v, str) and v.strip()]
    return bool(values) and all(_NUMBER.match(v) for v in values)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value:g})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class _RowChecker:
    """Checks one record and accumulates its problems."""

    def __init__(self, record: RawRecord, mapping: Mapping[str, str], tabular: bool, numeric_labels: bool):
        self.record, self.mapping = record, mapping
        self.tabular, self.numeric_labels = tabular, numeric_labels
        self.problems: list[Problem] = []

    def add(self, field_name: str, reason: str, detail: str) -> None:
        self.problems.append(Problem(self.record.row, field_name, reason, detail))

    def check(self, format_name: str, max_chars: int | None) -> dict[str, Any]:
        record = self.record
        if record.error is not None:
            if record.reason is not None:  # a value inside the row was refused; error says where
                self.add(record.field, record.reason, record.error)
                return {}
            reason = "unparseable" if record.data is None else "wrong_type"
            self.add("(row)", reason, f"the row {record.error}")
            return {}
        fields = getattr(self, f"_check_{format_name}")()
        if not self.problems and max_chars is not None:
            self._check_length(fields, max_chars)
        return fields

    # Field helpers ------------------------------------------------------------------

    def _raw(self, canonical: str) -> tuple[str, Any]:
        column = self.mapping[canonical]
        return column, self.record.data.get(column)

    def _string(self, canonical: str, required: bool = True, nonempty: bool = True) -> str | None:
        column, value = self._raw(canonical)
        if value is None:
            if required:
                what = "null" if column in self.record.data else "missing"
                self.add(column, "missing", f"{column} is {what}")
            return None if required else ""
        if not isinstance(value, str):
            self.add(column, "wrong_type", f"{column} is {_type_name(value)}, expected a string")
            return None
        if nonempty and not value.strip():
            self.add(column, "empty", f"{column} is empty")
            return None
        return value

    def _turns(self, canonical: str, role_key: str, content_key: str, roles: dict[str, str]) -> list | None:
        column, value = self._raw(canonical)
        if value is None:
            self.add(column, "missing", f"{column} is {'null' if column in self.record.data else 'missing'}")
            return None
        if self.tabular and isinstance(value, str):
            # A CSV cell can only hold the list as JSON text.
            try:
                value = json_limits.loads(value)
            except json.JSONDecodeError:
                pass
            except JsonRefused as refused:
                where = format_path([column, *refused.field])
                self.add(where, refused.reason, f"{where} {refused.detail}")
                return None
        if not isinstance(value, list):
            expected = f"a list of {{{role_key}, {content_key}}} objects"
            self.add(column, "wrong_type", f"{column} is {_type_name(value)}, expected {expected}")
            return None
        before = len(self.problems)
        turns = []
        for index, turn in enumerate(value):
            where = f"{column}[{index}]"
            if not isinstance(turn, dict):
                self.add(where, "wrong_type", f"{where} is {_type_name(turn)}, expected an object")
                continue
            role, content = turn.get(role_key), turn.get(content_key)
            mapped = roles.get(role.strip().lower()) if isinstance(role, str) else None
            if role is None:
                self.add(f"{where}.{role_key}", "missing", f"{where}.{role_key} is missing")
            elif mapped is None:
                allowed = ", ".join(sorted(roles))
                self.add(f"{where}.{role_key}", "bad_role", f"{where}.{role_key} is {role!r}; allowed: {allowed}")
            if content is None:
                self.add(f"{where}.{content_key}", "missing", f"{where}.{content_key} is missing")
            elif not isinstance(content, str):
                detail = f"{where}.{content_key} is {_type_name(content)}, expected a string"
                self.add(f"{where}.{content_key}", "wrong_type", detail)
            elif mapped == "assistant" and not content.strip():
                self.add(f"{where}.{content_key}", "empty", f"{where}.{content_key} (assistant) is empty")
            turns.append({"role": mapped, "content": content})
        if len(self.problems) == before and not any(t["role"] == "assistant" for t in turns):
            detail = f"{column} is empty" if not turns else f"{column} has no assistant turn"
            self.add(column, "no_assistant_turn", detail)
        return turns

    # Formats ------------------------------------------------------------------------

    def _check_alpaca(self) -> dict[str, Any]:
        fields = {"instruction": self._string("instruction"), "input": "", "output": self._string("output")}
        if "input" in self.mapping:
            fields["input"] = self._string("input", required=False, nonempty=False)
        return fields

    def _check_chat(self) -> dict[str, Any]:
        return {"messages": self._turns("messages", "role", "content", CHAT_ROLES)}

    def _check_sharegpt(self) -> dict[str, Any]:
        # Roles are mapped to system/user/assistant here, so normalise treats it like chat.
        return {"messages": self._turns("conversations", "from", "value", SHAREGPT_ROLES)}

    def _check_prompt_completion(self) -> dict[str, Any]:
        return {"prompt": self._string("prompt"), "completion": self._string("completion")}

    def _check_text(self) -> dict[str, Any]:
        return {"text": self._string("text")}

    def _check_classification(self) -> dict[str, Any]:
        return {"text": self._string("text"), "label": self._label()}

    def _label(self) -> int | str | None:
        column, value = self._raw("label")
        if isinstance(value, str) and self.numeric_labels and value.strip():
            if not any(c in value for c in ".eE") and sum(c.isdigit() for c in value) > MAX_INT_DIGITS:
                digits = sum(c.isdigit() for c in value)
                detail = f"{column} is an integer with {digits:,} digits; the limit is {MAX_INT_DIGITS:,}"
                self.add(column, "number_too_long", detail)
                return None
            value = float(value) if any(c in value for c in ".eE") else int(value)
        if value is None:
            self.add(column, "missing", f"{column} is {'null' if column in self.record.data else 'missing'}")
            return None
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            self.add(column, "wrong_type", f"{column} is {_type_name(value)}, expected an integer or a string")
            return None
        if isinstance(value, float):
            # 1.0 is how Parquet/pandas store an int column that once held a null: accept it as 1.
            if value.is_integer():
                return int(value)
            self.add(column, "wrong_type", f"{column} is {_type_name(value)}, expected an integer or a string")
            return None
        if isinstance(value, str) and not value.strip():
            self.add(column, "empty", f"{column} is empty")
            return None
        return value

    def _check_length(self, fields: dict[str, Any], max_chars: int) -> None:
        sizes: dict[str, int] = {}
        for name, value in fields.items():
            if isinstance(value, str):
                sizes[self.mapping.get(name, name)] = len(value)
            elif isinstance(value, list):
                column = self.mapping.get("messages") or self.mapping.get("conversations") or name
                sizes[column] = sum(len(t["content"]) for t in value)
        total = sum(sizes.values())
        if total > max_chars:
            largest = max(sizes, key=sizes.__getitem__)
            self.add(largest, "too_long", f"the row has {total:,} characters; the limit is {max_chars:,}")
