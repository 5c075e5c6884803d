"""`studio dataset ...`: add, inspect, list, show and delete datasets from the command line."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import click

from studio.datasets.mapping import parse_map_options
from studio.datasets.plain_text import SPLIT_CHOICES
from studio.errors import StudioError
from studio.services.datasets import DatasetService

PREVIEW_CHARS = 160
SPLIT_BY_OPTION = click.option(
    "--split-by",
    type=click.Choice(SPLIT_CHOICES),
    default=None,
    help="For .txt/.md files: one document per blank-line-separated paragraph (default) or the whole file.",
)


class _StudioClickError(click.ClickException):
    """Shows a StudioError as one `error: ...` line, like the rest of the studio CLI."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


def _clean_errors(func):
    """Turn StudioError into a one-line message and exit status 1, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except StudioError as exc:
            raise _StudioClickError(str(exc)) from None

    return wrapper


def _service() -> DatasetService:
    from studio.cli.common import services

    return services().datasets


def _short(value: Any, limit: int = PREVIEW_CHARS) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _validation_lines(report: dict[str, Any], limit: int = 5) -> list[str]:
    total, stored = report.get("rows_total", 0), report.get("rows_stored", report.get("rows_valid", 0))
    lines = [f"validation: {stored} of {total} rows stored"]
    dropped = report.get("dropped_rows") or []
    if dropped:
        counts = ", ".join(f"{k}: {v}" for k, v in report.get("counts_by_reason", {}).items())
        shown = ", ".join(map(str, dropped[:20])) + (" ..." if len(dropped) > 20 else "")
        lines.append(f"  dropped {len(dropped)} invalid rows ({counts}): rows {shown}")
        for problem in report.get("problems", [])[:limit]:
            lines.append(f"  row {problem['row']} {problem['field']}: {problem['detail']}")
    else:
        lines.append("  every row is valid")
    if report.get("labels") is not None:
        counts = ", ".join(f"{c['label']}: {c['count']}" for c in report.get("label_counts", []))
        lines.append(f"  labels: {counts}")
    for note in report.get("notes", []):
        lines.append(f"  note: {note}")
    return lines


@click.group("dataset")
def dataset() -> None:
    """Add, inspect, list, show and delete training datasets."""


@dataset.command("add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Display name (default: the file name without extension).")
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="FIELD=COLUMN",
    help="Map a column to a canonical field, e.g. --map prompt=question (column=field also works).",
)
@click.option("--drop-invalid", is_flag=True, help="Store only the valid rows; the dropped ones are reported.")
@SPLIT_BY_OPTION
@_clean_errors
def add_command(file: Path, name: str | None, maps: tuple[str, ...], drop_invalid: bool, split_by: str | None) -> None:
    """Validate FILE (.jsonl, .json, .csv, .tsv, .parquet, or prose as .txt/.md), normalise it and store it."""
    mapping = parse_map_options(maps) or None
    row = _service().add(file, name=name, mapping=mapping, drop_invalid=drop_invalid, split_by=split_by)
    report = row.report or {}
    click.echo(f"added dataset {row.id}: {row.name}")
    click.echo(f"format: {row.format} ({report.get('task')}), rows: {row.rows}")
    click.echo(f"mapping: {', '.join(f'{k}={v}' for k, v in row.mapping.items())}")
    for line in _validation_lines(report):
        click.echo(line)


@dataset.command("inspect")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--map", "maps", multiple=True, metavar="FIELD=COLUMN", help="Check this mapping.")
@SPLIT_BY_OPTION
@_clean_errors
def inspect_command(file: Path, maps: tuple[str, ...], split_by: str | None) -> None:
    """Show FILE's detected format or proposed mapping and a preview, without storing it."""
    found = _service().inspect(file, mapping=parse_map_options(maps) or None, split_by=split_by)
    det = found.detection
    click.echo(f"{file.name}: {found.file_format}, {found.encoding}, {found.rows_total} rows")
    click.echo(f"columns: {', '.join(found.columns)}")
    if det.format is None:
        click.echo(f"format: not recognised ({det.reason})")
    elif det.needs_confirmation:
        click.echo(f"proposed: {det.format} (confidence {det.confidence:.2f}; {det.reason})")
        click.echo(f"confirm with: studio dataset add {file} {det.map_flags()}")
    else:
        click.echo(f"format: {det.format} ({det.reason})")
    if det.sequence:
        click.echo(f"sequences: {det.sequence['description']}")
        click.echo(f"letters: {det.sequence['letters']}")
    if found.validation:
        v = found.validation
        click.echo(f"valid rows: {v['rows_valid']} of {v['rows_total']}")
        for problem in v["problems"][:5]:
            click.echo(f"  row {problem['row']} {problem['field']}: {problem['detail']}")
    for record in found.preview[:5]:
        click.echo(f"  {_short(record)}")
    for note in found.notes:
        click.echo(f"note: {note}")


@dataset.command("list")
@_clean_errors
def list_command() -> None:
    """List datasets, newest first."""
    rows = _service().list()
    if not rows:
        click.echo("no datasets yet; add one with `studio dataset add FILE`")
        return
    body = [
        [
            str(r.id),
            r.name,
            r.format,
            str((r.report or {}).get("task", "")),
            str(r.rows),
            r.created_at.strftime("%Y-%m-%d %H:%M") if r.created_at else "",
        ]
        for r in rows
    ]
    click.echo(_table(["id", "name", "format", "task", "rows", "created"], body))


@dataset.command("show")
@click.argument("dataset_id", type=int)
@_clean_errors
def show_command(dataset_id: int) -> None:
    """Show a dataset's details, validation report and first 5 rows."""
    service = _service()
    row = service.get(dataset_id)
    report = row.report or {}
    click.echo(f"dataset {row.id}: {row.name}")
    click.echo(f"format: {row.format} ({report.get('task')}), rows: {row.rows}")
    click.echo(f"mapping: {', '.join(f'{k}={v}' for k, v in row.mapping.items())}")
    click.echo(f"file: {report.get('file_format')}, {report.get('encoding')}, {row.size_bytes} bytes")
    click.echo(f"sha256: {row.sha256}")
    click.echo(f"original: {row.original_path}")
    click.echo(f"normalised: {row.stored_path}")
    click.echo(f"created: {row.created_at:%Y-%m-%d %H:%M:%S %Z}")
    for line in _validation_lines(report):
        click.echo(line)
    click.echo("preview:")
    for record in service.preview(dataset_id, n=5):
        click.echo(f"  {_short(record)}")


@dataset.command("delete")
@click.argument("dataset_id", type=int)
@_clean_errors
def delete_command(dataset_id: int) -> None:
    """Delete a dataset and its stored files."""
    service = _service()
    name = service.get(dataset_id).name
    service.delete(dataset_id)
    click.echo(f"deleted dataset {dataset_id}: {name}")


# `drop` is the same command under the name the issue also uses.
dataset.add_command(delete_command, name="drop")
