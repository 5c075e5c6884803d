"""Canonical JSONL keeps one row per line for every line splitter, whatever characters the text holds.

Hypothesis found a Parquet upload whose text held U+0085 (NEL): JSON leaves it raw, and
``str.splitlines()`` (used e.g. by the transfer kit's reader) split the stored row in two.
"""

from __future__ import annotations

import json

from studio.datasets.normalise import jsonl_line, read_jsonl, write_jsonl

BREAKS = ["\x85", "\u2028", "\u2029", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\r\n"]


def test_every_line_break_character_is_escaped_and_round_trips(tmp_path):
    rows = [{"text": f"before{ch}after", "label": i} for i, ch in enumerate(BREAKS)]
    path = tmp_path / "rows.jsonl"
    assert write_jsonl(rows, path) == len(rows)
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) == len(rows)  # str.splitlines(): every Unicode line break
    assert len(text.split("\n")) == len(rows) + 1  # plain "\n" splitting (the file ends with one)
    assert read_jsonl(path) == rows
    assert [json.loads(line) for line in text.splitlines()] == rows


def test_other_text_stays_readable():
    line = jsonl_line({"text": "naïve café 😀 — ok"})
    assert line == '{"text": "naïve café 😀 — ok"}\n'
    assert json.loads(jsonl_line({"text": "a\u2028b"})) == {"text": "a\u2028b"}
    assert "\u2028" not in jsonl_line({"text": "a\u2028b"})
