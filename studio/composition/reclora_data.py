"""A registered dataset's rows with their user column, for RecLoRA training.

The studio stores a dataset as canonical rows (``messages`` or ``text``), which drop every
other column of the uploaded file, the user column included. The user of each row is
therefore read back from the stored original file: its records, less the rows dropped as
invalid at import (their numbers are in the dataset's report), are the canonical rows in
order. A canonical file that already carries the column (rows written by a script) is
used as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from studio.datasets.normalise import read_jsonl
from studio.errors import ValidationFailed
from studio.schema import missing_column_message


def dataset_columns(dataset_row: Any) -> list[str]:
    """The columns of the uploaded file (the import report's), else the keys of the first canonical row."""
    columns = (dataset_row.report or {}).get("columns")
    if columns:
        return [str(c) for c in columns]
    first = read_jsonl(Path(dataset_row.stored_path), limit=1)
    return list(first[0]) if first else []


def check_user_column(dataset_row: Any, user_column: str) -> list[str]:
    """The dataset's columns; ValidationFailed listing them when ``user_column`` is not one."""
    columns = dataset_columns(dataset_row)
    if user_column not in columns:
        raise ValidationFailed(f"user_column: {missing_column_message(user_column, columns)}")
    return columns


def rows_with_users(dataset_row: Any, user_column: str) -> list[dict[str, Any]]:
    """Every canonical row of the dataset with ``user_column`` set from the original file."""
    check_user_column(dataset_row, user_column)
    rows = read_jsonl(Path(dataset_row.stored_path))
    if rows and all(user_column in row for row in rows):
        return rows
    users = _original_users(dataset_row, user_column)
    if len(users) != len(rows):
        raise ValidationFailed(
            f"the dataset's original file has {len(users)} usable rows but {len(rows)} were stored; "
            "import the file again"
        )
    return [dict(row, **{user_column: user}) for row, user in zip(rows, users, strict=True)]


def _original_users(dataset_row: Any, user_column: str) -> list[Any]:
    from studio.datasets.readers import file_kind, parse_bytes

    report = dataset_row.report or {}
    path = Path(dataset_row.original_path)
    if not path.is_file():
        raise ValidationFailed(f"the dataset's original file {path} is missing; import the file again")
    kwargs = {"split_by": report["split_by"]} if report.get("split_by") else {}
    table = parse_bytes(path.read_bytes(), file_kind(path), path.name, **kwargs)
    dropped = set(report.get("dropped_rows") or [])
    kept = [r for r in table.records if r.row not in dropped and isinstance(r.data, dict)]
    return [r.data.get(user_column) for r in kept]
