"""Dataset ingestion: read, detect the format, validate, normalise and split.

Pipeline (each step its own module):
``readers`` (bytes -> numbered raw records; prose is split into documents by
``plain_text``) -> ``formats``/``mapping`` (which columns mean what) -> ``validation``
(exact per-row problems) -> ``normalise`` (the canonical JSONL training reads) ->
``splits`` (seeded train/validation indices).
:class:`studio.services.datasets.DatasetService` ties them to the registry.
"""

from studio.datasets.formats import CANONICAL_FIELDS, FORMATS, Detection, detect_format, task_of
from studio.datasets.mapping import orient_mapping, parse_map_options, resolve_mapping
from studio.datasets.normalise import read_jsonl, to_canonical, write_jsonl
from studio.datasets.readers import SUPPORTED_SUFFIXES, RawRecord, RawTable, parse_bytes
from studio.datasets.splits import split_list, split_rows
from studio.datasets.validation import DEFAULT_MAX_ROW_CHARS, Problem, ValidationResult, validate_rows

__all__ = [
    "CANONICAL_FIELDS",
    "DEFAULT_MAX_ROW_CHARS",
    "FORMATS",
    "SUPPORTED_SUFFIXES",
    "Detection",
    "Problem",
    "RawRecord",
    "RawTable",
    "ValidationResult",
    "detect_format",
    "orient_mapping",
    "parse_bytes",
    "parse_map_options",
    "read_jsonl",
    "resolve_mapping",
    "split_list",
    "split_rows",
    "task_of",
    "to_canonical",
    "validate_rows",
    "write_jsonl",
]
