"""Hypothesis strategies for uploads: any bytes, JSON-ish noise and almost-right datasets.

``uploads()`` draws ``(file name, bytes)`` for every supported suffix. Besides plain random
bytes, it builds files that get past the first checks (they decode, they parse, their
columns name a format) so that validation, normalising and storing are exercised too, with
the values that used to crash them: deep nesting, integer literals over the int/str
conversion limit, lone surrogates, NaN and infinities, NULs, odd encodings.
"""

from __future__ import annotations

import csv
import io
import json

from hypothesis import strategies as st

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".md")
PROSE_SUFFIXES = (".txt", ".md")
HUGE_INT = "9" * 5000
# Placeholders replaced in the serialised text (json.dumps cannot write these values itself).
_HUGE, _DEEP, _DEEPER = "@@huge@@", "@@deep@@", "@@deeper@@"
_SPLICES = {f'"{_HUGE}"': HUGE_INT, f'"{_DEEP}"': "[" * 150 + "]" * 150, f'"{_DEEPER}"': "[" * 5000 + "]" * 5000}

FIELD_NAMES = ["text", "label", "instruction", "input", "output", "prompt", "completion", "messages",
               "conversations", "role", "content", "from", "value", "question", "answer"]  # fmt: skip
ROLES = ["user", "assistant", "system", "human", "gpt"]
FRAGMENTS = [
    "{", "}", "[", "]", '"', ":", ",", "\n", "\r\n", "\t", ";", " ", "0", "-1", "1.5e3", "1e999", "NaN",
    "null", "true", *(f'"{name}"' for name in FIELD_NAMES + ROLES), "\\ud800", "\\udc00", "\\ud83d\\ude00",
    "\\u0000", "é", "\x00", "[" * 120, "]" * 120, "[" * 3000, HUGE_INT, "text,label", "a,1", '""',
    "\n\n", " \t\n", "```", "word", "Prose line.",
]  # fmt: skip

texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "\ud800", "x\udc00y", "\U0001f600", _HUGE, _DEEP, _DEEPER, "1", "0", *ROLES]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(),
    texts,
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FIELD_NAMES) | texts, inner, max_size=3)
    ),
    max_leaves=8,
)
turns = st.lists(st.fixed_dictionaries({"role": st.sampled_from(ROLES) | texts, "content": texts | values}), max_size=3)
# Rows shaped like a format, so that many files get as far as being stored.
shaped = st.one_of(
    st.fixed_dictionaries({"instruction": texts, "output": texts}),
    st.fixed_dictionaries({"messages": turns}),
    st.fixed_dictionaries({"text": texts, "label": scalars}),
    st.fixed_dictionaries({"prompt": texts, "completion": texts | values}),
    st.fixed_dictionaries({"text": texts}),
)
records = st.lists(
    shaped | st.dictionaries(st.sampled_from(FIELD_NAMES) | texts, values | turns, max_size=4) | values,
    min_size=1,
    max_size=5,
)
encodings = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252", "surrogatepass"])


def _encode(text: str, encoding: str) -> bytes:
    if encoding == "surrogatepass":  # lone surrogates written as raw (invalid) UTF-8 bytes
        return text.encode("utf-8", "surrogatepass")
    return text.encode(encoding, "replace")


def _splice(text: str) -> str:
    for placeholder, replacement in _SPLICES.items():
        text = text.replace(placeholder, replacement)
    return text


def _as_json_text(value) -> str:
    # ensure_ascii writes lone surrogates as \udXXX escapes, as a buggy exporter would
    return _splice(json.dumps(value, ensure_ascii=True))


def _prose(rows: list) -> str:
    """Every string in the rows as paragraphs (blank-line separated), the way a .txt/.md file holds text."""
    strings: list[str] = []
    stack = list(rows)
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings.append(_splice(item))
        elif isinstance(item, dict):
            stack.extend([*map(str, item), *item.values()])
        elif isinstance(item, list):
            stack.extend(item)
    return "\n\n".join(strings)


def _serialise(rows: list, suffix: str, wrapped: bool) -> str:
    if suffix in PROSE_SUFFIXES:
        return _prose(rows)
    if suffix == ".jsonl":
        return "".join(_as_json_text(row) + "\n" for row in rows)
    if suffix == ".json":
        return _as_json_text({"data": rows} if wrapped else rows)
    delimiter = "\t" if suffix == ".tsv" else ","
    header = list(dict.fromkeys(str(k) for row in rows if isinstance(row, dict) for k in row)) or ["text"]
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter)
    writer.writerow(header)
    for row in rows:
        row = row if isinstance(row, dict) else {}
        writer.writerow([_splice(v if isinstance(v, str) else json.dumps(v)) for v in (row.get(h) for h in header)])
    return out.getvalue()


def _parquet(rows: list, flips: list[tuple[int, int]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list] = {}
    dict_rows = [row for row in rows if isinstance(row, dict)] or [{"text": "x"}]
    for key in dict.fromkeys(str(k).encode("utf-8", "replace").decode() for row in dict_rows for k in row):
        cells = [row.get(key) for row in dict_rows]
        columns[key] = [c if isinstance(c, str) else json.dumps(c) for c in cells]
        columns[key] = [c.encode("utf-8", "replace").decode() for c in columns[key]]
    sink = io.BytesIO()
    pq.write_table(pa.table(columns or {"text": ["x"]}), sink)
    data = bytearray(sink.getvalue())
    for position, byte in flips:  # corrupt a few bytes: the reader must refuse, not crash
        data[position % len(data)] = byte
    return bytes(data)


@st.composite
def uploads(draw) -> tuple[str, bytes]:
    """A file name with a supported suffix and bytes that may or may not be a dataset."""
    suffix = draw(st.sampled_from(SUFFIXES))
    kind = draw(st.sampled_from(["bytes", "noise", "records"]))
    if kind == "bytes":
        return f"upload{suffix}", draw(st.binary(max_size=300))
    if kind == "noise" and suffix != ".parquet":
        text = "".join(draw(st.lists(st.sampled_from(FRAGMENTS), max_size=40)))
        return f"upload{suffix}", _encode(text, draw(encodings))
    rows = draw(records)
    if suffix == ".parquet":
        flips = draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=2))
        return f"upload{suffix}", _parquet(rows, flips)
    text = _serialise(rows, suffix, wrapped=draw(st.booleans()))
    return f"upload{suffix}", _encode(text, draw(encodings))
