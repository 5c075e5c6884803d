"""Reading every supported file type and encoding, and refusing what cannot be read."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from studio.datasets.readers import decode_text, file_kind, parse_bytes, read_file_bytes
from studio.errors import ValidationFailed

ROWS = [
    {"instruction": "Say hi", "input": "", "output": "Hi"},
    {"instruction": "Add", "input": "1+1", "output": "2"},
]


def parse_file(path):
    return parse_bytes(path.read_bytes(), file_kind(path), path.name)


def test_jsonl_rows_are_numbered_by_line_and_blank_lines_skipped(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    table = parse_file(path)
    assert table.file_format == "jsonl"
    assert table.encoding == "utf-8"
    assert table.columns == ["instruction", "input", "output"]
    assert [r.row for r in table.records] == [1, 3]
    assert [r.data for r in table.records] == ROWS
    assert table.row_numbering == "line"


def test_jsonl_crlf_line_ends(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"\r\n".join(json.dumps(r).encode() for r in ROWS) + b"\r\n")
    assert [r.data for r in parse_file(path).records] == ROWS


def test_json_array_and_object_with_data_key(tmp_path):
    array = tmp_path / "a.json"
    array.write_text(json.dumps(ROWS), encoding="utf-8")
    wrapped = tmp_path / "b.json"
    wrapped.write_text(json.dumps({"version": 1, "data": ROWS}), encoding="utf-8")
    other_key = tmp_path / "c.json"
    other_key.write_text(json.dumps({"meta": {}, "conversations_list": ROWS}), encoding="utf-8")
    for path in (array, wrapped, other_key):
        table = parse_file(path)
        assert table.file_format == "json"
        assert [r.data for r in table.records] == ROWS
        assert [r.row for r in table.records] == [1, 2]
        assert table.row_numbering == "record"
    assert parse_file(wrapped).notes == ["records read from the 'data' key"]


def test_json_file_holding_json_lines_is_read_as_jsonl(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("\n".join(json.dumps(r) for r in ROWS), encoding="utf-8")
    table = parse_file(path)
    assert table.file_format == "jsonl"
    assert [r.data for r in table.records] == ROWS
    assert "JSON Lines" in table.notes[0]


def test_json_refusals(tmp_path):
    broken = tmp_path / "a.json"
    broken.write_text('[{"a": 1},\n {"a": }]', encoding="utf-8")
    with pytest.raises(ValidationFailed, match=r"a.json is not valid JSON: Expecting value at line 2 column 8"):
        parse_file(broken)
    no_list = tmp_path / "b.json"
    no_list.write_text('{"a": 1, "b": 2}', encoding="utf-8")
    with pytest.raises(ValidationFailed, match="without a list of records"):
        parse_file(no_list)


def test_csv_and_tsv_rows_are_numbered_by_file_line(write_csv):
    rows = [["Say hi", "", "Hi"], ["Multi\nline", "x", "y"], ["Add", "1+1", "2"]]
    for name in ("a.csv", "a.tsv"):
        table = parse_file(write_csv(["instruction", "input", "output"], rows, name=name))
        assert table.file_format == name[-3:]
        assert table.columns == ["instruction", "input", "output"]
        # header is line 1; the second record spans lines 3-4, so the third starts on line 5
        assert [r.row for r in table.records] == [2, 3, 5]
        assert table.records[1].data == {"instruction": "Multi\nline", "input": "x", "output": "y"}


def test_csv_with_wrong_field_count_is_an_unparseable_row(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("text,label\nhello,1\nbad,1,extra\n", encoding="utf-8")
    table = parse_file(path)
    assert table.records[1].row == 3
    assert table.records[1].data is None
    assert table.records[1].error == "has 3 fields, the header has 2"


def test_semicolon_csv(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("text;label\nhello, world;1\n", encoding="utf-8")
    table = parse_file(path)
    assert table.records[0].data == {"text": "hello, world", "label": "1"}


def test_parquet(tmp_path):
    path = tmp_path / "a.parquet"
    frame = pd.DataFrame({"messages": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]})
    frame.to_parquet(path)
    table = parse_file(path)
    assert table.file_format == "parquet"
    assert table.encoding == "binary"
    assert table.records[0].row == 1
    assert table.records[0].data["messages"][1] == {"role": "assistant", "content": "hello"}


def test_corrupt_parquet_is_refused(tmp_path):
    path = tmp_path / "a.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(ValidationFailed, match="a.parquet is not a readable Parquet file"):
        parse_file(path)


@pytest.mark.parametrize(
    ("encoding", "bom", "expected"),
    [
        ("utf-8", b"\xef\xbb\xbf", "utf-8-sig"),
        ("utf-16-le", b"\xff\xfe", "utf-16-le"),
        ("utf-16-be", b"\xfe\xff", "utf-16-be"),
    ],
)
def test_byte_order_marks(tmp_path, encoding, bom, expected):
    path = tmp_path / "a.csv"
    path.write_bytes(bom + "text,label\ncafé ☕,1\n".encode(encoding))
    table = parse_file(path)
    assert table.encoding == expected
    assert table.columns == ["text", "label"]  # no BOM glued to the first column name
    assert table.records[0].data == {"text": "café ☕", "label": "1"}


def test_clear_cp1252_is_decoded():
    data = "text,label\nCafé crème – “très bon”,1\nNaïve,0\n".encode("cp1252")
    text, encoding = decode_text(data, "a.csv")
    assert encoding == "cp1252"
    assert "Café crème – “très bon”" in text


def test_mixed_encodings_are_refused_with_the_byte_offset():
    # valid UTF-8 "é" first, then a lone cp1252 byte: no clear decision is possible
    data = "ok é\n".encode() + b"caf\xe9\n"
    with pytest.raises(ValidationFailed) as info:
        decode_text(data, "a.jsonl")
    message = str(info.value)
    assert "byte 0xe9 at byte offset 9 (line 2)" in message
    assert "re-save the file as UTF-8" in message


def test_cyrillic_legacy_bytes_are_refused():
    data = "text\nПривет мир\n".encode("cp1251")
    with pytest.raises(ValidationFailed, match=r"byte offset 5 .*re-save the file as UTF-8"):
        decode_text(data, "a.csv")


def test_undefined_cp1252_byte_is_refused():
    with pytest.raises(ValidationFailed, match="byte 0x81 at byte offset 2"):
        decode_text(b"ab\x81cd", "a.jsonl")


def test_nul_bytes_are_refused():
    data = "text\nhi\n".encode("utf-16-le")  # UTF-16 without a BOM
    with pytest.raises(ValidationFailed, match="UTF-16 without a byte-order mark"):
        decode_text(data, "a.csv")


def test_size_limit_is_refused_with_size_and_limit(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"x" * (2 * 1024 * 1024 + 100))
    with pytest.raises(ValidationFailed, match=r"big.jsonl is 2.0 MB, over the upload limit of 1.5 MB"):
        read_file_bytes(path, max_upload_mb=1.5)
    assert read_file_bytes(path, max_upload_mb=3) == path.read_bytes()


def test_unsupported_missing_and_empty_files(tmp_path):
    with pytest.raises(ValidationFailed, match=r"unsupported file type '.xlsx'"):
        file_kind(tmp_path / "a.xlsx")
    with pytest.raises(ValidationFailed, match="does not exist"):
        read_file_bytes(tmp_path / "nope.jsonl", 10)
    empty = tmp_path / "e.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(ValidationFailed, match="e.jsonl is empty"):
        read_file_bytes(empty, 10)
    blank = tmp_path / "b.jsonl"
    blank.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValidationFailed, match="b.jsonl has no data rows"):
        parse_file(blank)
