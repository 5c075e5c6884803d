"""DatasetService: inspect, add, list, preview, load and delete datasets.

The UI and the CLI call this; it calls :mod:`studio.datasets` for the file work and
:class:`models_db.registry.Registry` for every database access. An added dataset
lives in ``<datasets_dir>/<uuid>/``: ``original<ext>`` (the uploaded bytes, which the
stored sha256 is of) and ``data.jsonl`` (the canonical rows training reads).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from models_db.registry import Registry
from models_db.tables import DatasetRow
from studio.datasets.formats import Detection, add_sequence_column, detect_format, refusal_message
from studio.datasets.mapping import resolve_mapping
from studio.datasets.normalise import label_summary, read_jsonl, to_canonical, write_jsonl
from studio.datasets.plain_text import DEFAULT_SPLIT, SPLIT_CHOICES, TEXT_KINDS
from studio.datasets.readers import RawTable, file_kind, parse_bytes, read_file_bytes
from studio.datasets.validation import ValidationResult, validate_rows
from studio.errors import ValidationFailed
from studio.settings import Settings

SAMPLE_ROWS = 500  # rows whose values inform format proposals
PREVIEW_ROWS = 20


@dataclass
class Inspection:
    """What :meth:`DatasetService.inspect` learnt about a file, without storing anything."""

    path: str
    file_format: str
    encoding: str
    size_bytes: int
    sha256: str
    columns: list[str]
    rows_total: int
    detection: Detection
    preview: list[dict[str, Any]]
    validation: dict[str, Any] | None  # report of validating with the detected or proposed mapping
    notes: list[str]

    @property
    def format(self) -> str | None:
        return self.detection.format

    @property
    def mapping(self) -> dict[str, str]:
        return self.detection.mapping

    @property
    def needs_confirmation(self) -> bool:
        return self.detection.needs_confirmation

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["detection"] = self.detection.to_dict()
        # Parquet can hold dates or bytes; the UI wants plain JSON.
        return json.loads(json.dumps(data, default=str))


class DatasetService:
    """Everything the studio does with datasets."""

    def __init__(self, registry: Registry, settings: Settings, max_row_chars: int | None = None):
        self.registry = registry
        self.settings = settings
        # Settings has no per-row limit yet; honour one if it is added there.
        self.max_row_chars = max_row_chars or settings.max_row_chars

    # Reading ------------------------------------------------------------------------

    def _load(self, path: Path, split_by: str | None) -> tuple[bytes, RawTable]:
        path = Path(path)
        kind = file_kind(path)
        if split_by is not None and split_by not in SPLIT_CHOICES:
            raise ValidationFailed(f"split_by must be one of {', '.join(SPLIT_CHOICES)}, not {split_by!r}")
        if split_by is not None and kind not in TEXT_KINDS:
            raise ValidationFailed(
                f"{path.name}: splitting into documents applies to .txt and .md files only; "
                f"a {kind.upper()} file has rows of its own"
            )
        data = read_file_bytes(path, self.settings.max_upload_mb)
        return data, parse_bytes(data, kind, path.name, split_by or DEFAULT_SPLIT)

    def _row_limit(self, table: RawTable) -> int | None:
        # A prose document is kept whole however long (training truncates it to max_length
        # tokens, and the report says so); rows of structured files keep the per-row limit.
        return None if table.file_format in TEXT_KINDS else self.max_row_chars

    @staticmethod
    def _detect(table: RawTable, mapping: Mapping[str, str] | None) -> Detection:
        samples = [r.data for r in table.records[:SAMPLE_ROWS] if r.error is None]
        if mapping:
            return add_sequence_column(resolve_mapping(table.columns, mapping), table.columns, samples)
        return detect_format(table.columns, samples)

    @staticmethod
    def _report_letters(table: RawTable, detection: Detection) -> None:
        """Replace the sequence column's letter report (of the sample) by one of every row of the file."""
        from studio.sequences.alphabet import letter_report

        if not detection.sequence:
            return
        column = detection.sequence["column"]
        values = (r.data.get(column) for r in table.records if r.error is None and isinstance(r.data, dict))
        report = letter_report(values, detection.sequence["kind"])
        detection.sequence["report"] = report.to_dict()
        detection.sequence["letters"] = report.summary()

    def inspect(
        self, path: str | Path, mapping: Mapping[str, str] | None = None, split_by: str | None = None
    ) -> Inspection:
        """Read and analyse a file: detected format or proposed mapping, raw preview, validation.

        Nothing is stored. ``mapping`` (field -> column, either order) checks a mapping
        before :meth:`add`. ``split_by`` (``paragraph``, the default, or ``file``) says how
        a .txt/.md file becomes documents; other files refuse it.
        """
        data, table = self._load(Path(path), split_by)
        detection = self._detect(table, mapping)
        self._report_letters(table, detection)
        validation = None
        if detection.format is not None:
            limit = self._row_limit(table)
            validation = validate_rows(table, detection.format, detection.mapping, limit).report()
        preview = [r.data for r in table.records[:PREVIEW_ROWS] if isinstance(r.data, dict)]
        return Inspection(
            path=str(path),
            file_format=table.file_format,
            encoding=table.encoding,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            columns=table.columns,
            rows_total=len(table.records),
            detection=detection,
            preview=preview,
            validation=validation,
            notes=table.notes,
        )

    # Adding -------------------------------------------------------------------------

    def add(
        self,
        path: str | Path,
        name: str | None = None,
        mapping: Mapping[str, str] | None = None,
        drop_invalid: bool = False,
        split_by: str | None = None,
        submission_token: str | None = None,
    ) -> DatasetRow:
        """Validate, normalise and store a file; returns the registry row.

        Refuses (ValidationFailed) when the columns need a confirmed ``mapping`` or when
        rows are invalid and ``drop_invalid`` is False. With ``drop_invalid`` exactly the
        invalid rows are left out, and their numbers are recorded in the report.
        ``split_by`` is as for :meth:`inspect`. ``submission_token`` makes a repeated
        submit of one form (a double click) return the dataset the first one stored.
        """
        earlier = self.registry.dataset_with_token(submission_token)
        if earlier is not None:
            return earlier
        path = Path(path)
        data, table = self._load(path, split_by)
        detection = self._detect(table, mapping)
        self._report_letters(table, detection)
        if detection.needs_confirmation or detection.format is None:
            raise ValidationFailed(refusal_message(table.columns, detection))
        result = validate_rows(table, detection.format, detection.mapping, self._row_limit(table))
        self._refuse_invalid(result, drop_invalid)
        rows = [to_canonical(detection.format, fields) for _, fields in result.valid]
        report = self._report(table, detection, result, rows, drop_invalid, bool(mapping))

        folder = self.settings.datasets_dir / uuid.uuid4().hex
        folder.mkdir(parents=True)
        try:
            original = folder / f"original{path.suffix.lower()}"
            original.write_bytes(data)  # the very bytes the sha256 is of
            stored = folder / "data.jsonl"
            write_jsonl(rows, stored)
            row = self.registry.add_dataset(
                name=(name or path.stem).strip()[:200] or path.stem,
                format=detection.format,
                rows=len(rows),
                sha256=hashlib.sha256(data).hexdigest(),
                original_path=str(original),
                stored_path=str(stored),
                size_bytes=len(data),
                mapping=dict(detection.mapping),
                report=report,
                submission_token=submission_token,
            )
            if row.stored_path != str(stored):
                # A repeated submit stored the same form first (its row holds the token): keep only its files.
                shutil.rmtree(folder, ignore_errors=True)
            return row
        except BaseException:
            # No row without files, no files without a row.
            shutil.rmtree(folder, ignore_errors=True)
            raise

    @staticmethod
    def _refuse_invalid(result: ValidationResult, drop_invalid: bool) -> None:
        if not result.problems:
            return
        if not result.valid:
            raise ValidationFailed(f"no valid rows to store: {result.summary()}")
        if not drop_invalid:
            count = len(result.invalid_rows)
            raise ValidationFailed(
                f"{result.summary()}; fix the file, or re-run with --drop-invalid (drop_invalid=True) "
                f"to drop exactly these {count} rows"
            )

    def _report(
        self,
        table: RawTable,
        detection: Detection,
        result: ValidationResult,
        rows: list[dict[str, Any]],
        drop_invalid: bool,
        mapping_given: bool,
    ) -> dict[str, Any]:
        report: dict[str, Any] = {
            "task": detection.task,
            "source_format": detection.format,
            "mapping": dict(detection.mapping),
            "mapping_source": "user" if mapping_given else "detected",
            "columns": table.columns,
            "ignored_columns": detection.ignored_columns,
            "file_format": table.file_format,
            "encoding": table.encoding,
            "row_numbering": table.row_numbering,
            "max_row_chars": self._row_limit(table),
            **result.report(),
            "rows_stored": len(rows),
            "dropped_rows": result.invalid_rows if drop_invalid else [],
            "notes": list(table.notes),
        }
        if table.split_by is not None:
            report["split_by"] = table.split_by
        if detection.sequence:
            report["sequence"] = detection.sequence  # kind, proposed tokenizer and the letter report
        if table.encoding == "cp1252":
            report["notes"].append("decoded as Windows-1252 (not UTF-8); check accented characters")
        if detection.task == "classification":
            report["labels"], report["label_counts"] = label_summary(rows)
            if len(report["labels"]) < 2:
                report["notes"].append("only one label: a classifier needs at least two")
        return report

    # Reading back -------------------------------------------------------------------

    def list(self) -> list[DatasetRow]:
        """All datasets, newest first."""
        return self.registry.list_datasets()

    def get(self, dataset_id: int) -> DatasetRow:
        """One dataset's row; NotFoundError when there is none."""
        return self.registry.get_dataset(dataset_id)

    def preview(self, dataset_id: int, n: int = PREVIEW_ROWS) -> list[dict[str, Any]]:
        """The first ``n`` canonical rows."""
        return read_jsonl(Path(self.get(dataset_id).stored_path), limit=max(n, 0))

    def load_rows(self, dataset_id: int) -> list[dict[str, Any]]:
        """Every canonical row, in file order (split with :func:`studio.datasets.splits.split_rows`)."""
        return read_jsonl(Path(self.get(dataset_id).stored_path))

    def delete(self, dataset_id: int) -> None:
        """Remove the registry row and the dataset's folder."""
        row = self.get(dataset_id)
        self.registry.delete_dataset(dataset_id)
        folder = Path(row.stored_path).parent
        root = self.settings.datasets_dir.resolve()
        # Only ever remove a folder this service created under datasets_dir.
        if folder.resolve().parent == root and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
