"""Turn an uploaded file's bytes into numbered raw records (no format knowledge here).

Supported: .jsonl/.ndjson, .json (an array of objects, or an object holding such a
list), .csv, .tsv, .parquet, and prose as .txt or .md (one ``text`` record per paragraph
or per file, see :mod:`studio.datasets.plain_text`). Text files may be UTF-8 (with or without BOM) or
UTF-16/32 with a BOM; a legacy Windows-1252 fallback is used only when the bytes
leave no doubt. Every record keeps the
row number a person would see in the file, so problems can point at it.
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.datasets import json_limits, plain_text
from studio.datasets.json_limits import MAX_NESTING, JsonRefused, format_path
from studio.errors import ValidationFailed

SUPPORTED_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".txt": "txt",
    ".md": "md",
}
# Keys under which a JSON object commonly holds its list of records.
JSON_LIST_KEYS = ("data", "rows", "records", "examples", "items", "instances", "train")

_BOMS = (
    # UTF-32 first: its little-endian BOM starts with the UTF-16 one.
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
# cp1252 bytes 0x81, 0x8D, 0x8F, 0x90 and 0x9D are undefined; seeing one means "not cp1252".
_LEGACY_ENCODING = "cp1252"


@dataclass
class RawRecord:
    """One record of the file: ``data`` is what was parsed, ``error`` why it could not be.

    ``reason`` and ``field`` are set when a value inside the record was refused (see
    :mod:`studio.datasets.json_limits`); then ``error`` is the whole detail, and ``data`` is
    None so the refused value reaches neither the preview nor the stored rows.
    """

    row: int
    data: Any = None
    error: str | None = None
    field: str = "(row)"
    reason: str | None = None


def _refused_record(row: int, refused: JsonRefused) -> RawRecord:
    field_name = format_path(refused.field)
    subject = "the row" if field_name == "(row)" else field_name
    return RawRecord(row, error=f"{subject} {refused.detail}", field=field_name, reason=refused.reason)


@dataclass
class RawTable:
    """All records of a file plus what was learnt while reading it."""

    file_format: str
    encoding: str
    columns: list[str]
    records: list[RawRecord]
    # "line": row numbers are file line numbers (JSONL, CSV, TSV);
    # "record": 1-based position in the array or table (JSON, Parquet).
    row_numbering: str
    notes: list[str] = field(default_factory=list)
    # How a .txt/.md file became records ("paragraph" or "file"); None for files with rows.
    split_by: str | None = None


def file_kind(path: Path) -> str:
    """The reader to use for ``path``, from its extension; refuses unsupported ones."""
    kind = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise ValidationFailed(f"{path.name}: unsupported file type {path.suffix or '(none)'!r}; use {supported}")
    return kind


def read_file_bytes(path: Path, max_upload_mb: float) -> bytes:
    """Read ``path`` after checking it exists and is within the upload size limit."""
    path = Path(path)
    if not path.is_file():
        raise ValidationFailed(f"{path} does not exist or is not a file")
    size = path.stat().st_size
    limit = int(max_upload_mb * 1024 * 1024)
    if size > limit:
        raise ValidationFailed(
            f"{path.name} is {size / 1024 / 1024:.1f} MB, over the upload limit of {max_upload_mb:g} MB; "
            "split the file or raise STUDIO_MAX_UPLOAD_MB"
        )
    if size == 0:
        raise ValidationFailed(f"{path.name} is empty")
    return path.read_bytes()


def parse_bytes(data: bytes, kind: str, name: str, split_by: str = plain_text.DEFAULT_SPLIT) -> RawTable:
    """Parse the bytes of a file of ``kind`` (see :data:`SUPPORTED_SUFFIXES`) into a RawTable.

    ``split_by`` (``paragraph`` or ``file``) says how a .txt/.md file becomes records; other
    kinds have records of their own and ignore it.
    """
    plain_text.check_split(split_by)
    if kind == "parquet":
        table = _read_parquet(data, name)
    else:
        text, encoding = decode_text(data, name)
        if kind in plain_text.TEXT_KINDS:
            table = _read_plain_text(text, encoding, kind, name, split_by)
        elif kind == "jsonl":
            table = _read_jsonl(text, encoding, name)
        elif kind == "json":
            table = _read_json(text, encoding, name)
        else:
            table = _read_delimited(text, encoding, kind, name)
    if not table.records:
        raise ValidationFailed(f"{name} has no data rows")
    return table


# Decoding ---------------------------------------------------------------------------


def decode_text(data: bytes, name: str) -> tuple[str, str]:
    """Decode a text file; returns (text, encoding name) or refuses with the bad byte offset."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            codec = "utf-8" if encoding == "utf-8-sig" else encoding
            try:
                return _reject_nul(data[len(bom) :].decode(codec), name), encoding
            except UnicodeDecodeError as exc:
                offset = exc.start + len(bom)
                raise ValidationFailed(
                    f"{name} starts with a {encoding} byte-order mark but byte offset {offset} is not valid "
                    f"{encoding}; re-save the file as UTF-8"
                ) from None
    try:
        return _reject_nul(data.decode("utf-8"), name), "utf-8"
    except UnicodeDecodeError as exc:
        legacy = _clear_legacy_decoding(data)
        if legacy is not None:
            return _reject_nul(legacy, name), _LEGACY_ENCODING
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValidationFailed(
            f"{name} is not valid UTF-8: byte 0x{data[exc.start]:02x} at byte offset {exc.start} (line {line}) "
            "is invalid and the file's encoding cannot be determined reliably; re-save the file as UTF-8"
        ) from None


def _reject_nul(text: str, name: str) -> str:
    # NULs in decoded text mean UTF-16 without a BOM or a binary file; parsing would give garbage.
    pos = text.find("\x00")
    if pos >= 0:
        raise ValidationFailed(
            f"{name} contains a NUL character (text position {pos}); it looks like UTF-16 without a "
            "byte-order mark or a binary file; re-save the file as UTF-8"
        )
    return text


def _clear_legacy_decoding(data: bytes) -> str | None:
    """Decode as cp1252 only when that is clearly right, else None.

    Clear means: no valid multi-byte UTF-8 sequence anywhere (a mix of encodings is
    ambiguous), every byte is defined in cp1252, no control characters appear, and the
    non-ASCII characters are sparse, as accents in Western European text are. Long runs
    of non-ASCII letters are what Cyrillic, Greek or CJK legacy encodings look like when
    misread as cp1252, so those are refused rather than turned into mojibake.
    """
    lenient = data.decode("utf-8", errors="replace")
    if any(ord(ch) > 127 and ch != "\ufffd" for ch in lenient):
        return None
    try:
        text = data.decode(_LEGACY_ENCODING)
    except UnicodeDecodeError:
        return None
    non_ascii = [ch for ch in text if ord(ch) > 127]
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cn") for ch in non_ascii):
        return None
    visible = sum(1 for ch in text if not ch.isspace())
    if visible == 0 or len(non_ascii) / visible > 0.3:
        return None
    if re.search(r"[^\x00-\x7f]{4,}", text):
        return None
    return text


# Readers ----------------------------------------------------------------------------


def _columns_of(records: list[RawRecord]) -> list[str]:
    """Union of keys in order of first appearance (rows of JSON files may differ)."""
    seen: dict[str, None] = {}
    for record in records:
        if isinstance(record.data, dict):
            for key in record.data:
                seen.setdefault(str(key), None)
    return list(seen)


def _describe_json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, int | float) else "null"
    )


def _looks_like_prose(text: str) -> bool:
    """Whether text that failed to parse as JSON never tried to be an object or an array.

    A broken ``{...`` line is a bad row of a real JSON file; a line of words is a text file
    under the wrong name, and listing each of its lines as an invalid row would hide that.
    """
    return not text.lstrip().startswith(("{", "["))


def _not_json_message(name: str, line: int, column: int, msg: str) -> str:
    return (
        f"{name}: line {line}, column {column}: not JSON ({msg}) — is this a .txt file? "
        "rename it to .txt to import it as text"
    )


def _read_jsonl(text: str, encoding: str, name: str) -> RawTable:
    records = []
    # splitlines() would also split on U+2028 etc. inside strings; JSONL lines end at \n only.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue  # blank lines (often the last one) are not rows
        try:
            value = json_limits.loads(line)
        except json.JSONDecodeError as exc:
            if not records and _looks_like_prose(line):
                # The first line decides: a file that starts with prose is not JSON Lines at all.
                raise ValidationFailed(_not_json_message(name, number, exc.colno, exc.msg)) from None
            records.append(RawRecord(number, error=f"is not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        except JsonRefused as refused:
            records.append(_refused_record(number, refused))
            continue
        if isinstance(value, dict):
            records.append(RawRecord(number, value))
        else:
            records.append(RawRecord(number, value, error=f"is {_describe_json_type(value)}, expected an object"))
    return RawTable("jsonl", encoding, _columns_of(records), records, "line")


def _read_json(text: str, encoding: str, name: str) -> RawTable:
    try:
        value, suspect = json_limits.parse(text)
    except JsonRefused as refused:
        # The parser itself gave up, so no record of this file can be read.
        raise ValidationFailed(
            f"{name}: {_where_in_json_file(refused.path)} is nested deeper than {MAX_NESTING} levels; "
            "flatten that record or remove it"
        ) from None
    except json.JSONDecodeError as exc:
        # A .json file that is really JSON Lines is common: fall back when the first line is an object.
        first = next((line for line in text.split("\n") if line.strip()), "")
        try:
            is_jsonl = isinstance(json_limits.loads(first), dict)
        except JsonRefused:
            is_jsonl = first.lstrip().startswith("{")  # an object line with a bad value: JSONL all the same
        except json.JSONDecodeError:
            is_jsonl = False
        if is_jsonl:
            table = _read_jsonl(text, encoding, name)
            table.notes.append("the .json file holds one object per line; read as JSON Lines")
            return table
        if _looks_like_prose(text):
            raise ValidationFailed(_not_json_message(name, exc.lineno, exc.colno, exc.msg)) from None
        raise ValidationFailed(f"{name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    notes = []
    if isinstance(value, dict):
        key = _find_record_list(value)
        if key is None:
            raise ValidationFailed(
                f"{name} is a JSON object without a list of records; expected an array of objects "
                f"or an object with the list under one of: {', '.join(JSON_LIST_KEYS)}"
            )
        notes.append(f"records read from the {key!r} key")
        value = value[key]
    if not isinstance(value, list):
        raise ValidationFailed(f"{name} holds {_describe_json_type(value)}; expected an array of objects")
    records = []
    for number, item in enumerate(value, start=1):
        refused = json_limits.find_problem(item) if suspect else None
        if refused is not None:
            records.append(_refused_record(number, refused))
            continue
        error = None if isinstance(item, dict) else f"is {_describe_json_type(item)}, expected an object"
        records.append(RawRecord(number, item, error=error))
    return RawTable("json", encoding, _columns_of(records), records, "record", notes)


def _where_in_json_file(path: list[str | int]) -> str:
    """``row N field`` for a path into a .json file (an array, or an object holding one)."""
    if len(path) > 1 and isinstance(path[0], str) and isinstance(path[1], int):
        path = path[1:]  # the records sit under a key such as "data"
    if path and isinstance(path[0], int):
        return f"row {path[0] + 1} {format_path(path[1:2])}"
    return f"the value at {format_path(path)}"


def _find_record_list(obj: dict) -> str | None:
    for key in JSON_LIST_KEYS:
        if isinstance(obj.get(key), list):
            return key
    # Otherwise accept the only key that holds a list of objects.
    candidates = [k for k, v in obj.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
    return candidates[0] if len(candidates) == 1 else None


def _read_delimited(text: str, encoding: str, kind: str, name: str) -> RawTable:
    delimiter = "\t" if kind == "tsv" else ","
    header_line = text.split("\n", 1)[0]
    notes = []
    if kind == "csv" and "," not in header_line:
        # European spreadsheets save "CSV" with semicolons; a tab-only header is a TSV named .csv.
        for alternative in (";", "\t"):
            if alternative in header_line:
                delimiter = alternative
                notes.append(f"columns are separated by {alternative!r}")
                break
    old_limit = csv.field_size_limit()
    # Long fields must reach validation (to be reported as too long), not crash the csv module.
    csv.field_size_limit(2**31 - 1)
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise ValidationFailed(f"{name} has no header row") from None
        header = [column.strip() for column in header]
        if not any(header):
            raise ValidationFailed(f"{name}: the first line must be a header naming the columns")
        records = []
        previous_end = reader.line_num
        for fields in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not any(value.strip() for value in fields):
                continue  # blank lines are not rows
            if len(fields) != len(header):
                records.append(RawRecord(start, error=f"has {len(fields)} fields, the header has {len(header)}"))
                continue
            records.append(RawRecord(start, dict(zip(header, fields, strict=True))))
    except csv.Error as exc:
        raise ValidationFailed(f"{name} is not a readable {kind.upper()} file: {exc}") from None
    finally:
        csv.field_size_limit(old_limit)
    return RawTable(kind, encoding, header, records, "line", notes)


def _read_plain_text(text: str, encoding: str, kind: str, name: str, split_by: str) -> RawTable:
    documents = plain_text.split_documents(text, split_by, markdown=kind == "md")
    if not documents:
        raise ValidationFailed(f"{name} holds no text, only blank lines")
    records = [RawRecord(d.line, {"text": d.text}) for d in documents]
    if split_by == "file":
        notes = ["the whole file is one document"]
    else:
        notes = [f"one document per paragraph: {len(documents)} paragraphs separated by blank lines"]
    long_note = plain_text.long_document_note([d.text for d in documents])
    if long_note:
        notes.append(long_note)
    # Paragraphs are numbered by the line they start on; a whole file is record 1.
    numbering = "record" if split_by == "file" else "line"
    return RawTable(kind, encoding, ["text"], records, numbering, notes, split_by)


def _read_parquet(data: bytes, name: str) -> RawTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
        rows = table.to_pylist()
    except Exception as exc:  # pyarrow raises several types for corrupt files (or invalid UTF-8 strings)
        # pyarrow's messages span lines; the CLI and the UI show one.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValidationFailed(f"{name} is not a readable Parquet file: {reason}") from None
    records = [RawRecord(number, row) for number, row in enumerate(rows, start=1)]
    return RawTable("parquet", "binary", list(table.column_names), records, "record")
