"""Prose as .txt/.md datasets (per paragraph or per file), and prose under a JSON name refused as not JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio.datasets.plain_text import LONG_DOCUMENT_CHARS, split_documents
from studio.errors import ValidationFailed

PROSE = "The cat sat on the mat.\nIt was warm.\n\n\nThen it rained.\n \t \nThe end.\n"
PARAGRAPHS = ["The cat sat on the mat.\nIt was warm.", "Then it rained.", "The end."]


def write(tmp_path: Path, name: str, data: str | bytes, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode(encoding))
    return path


@pytest.mark.parametrize("suffix", [".txt", ".md"])
def test_prose_by_paragraph_stores_one_text_row_per_paragraph(service, tmp_path, suffix):
    path = write(tmp_path, f"story{suffix}", PROSE)
    found = service.inspect(path)  # paragraphs are the default
    assert (found.format, found.needs_confirmation, found.columns) == ("text", False, ["text"])
    assert found.file_format == suffix[1:] and found.rows_total == 3
    assert found.validation["rows_valid"] == 3
    assert "3 paragraphs separated by blank lines" in found.notes[0]

    row = service.add(path)
    assert (row.name, row.format, row.rows) == ("story", "text", 3)
    assert service.load_rows(row.id) == [{"text": text} for text in PARAGRAPHS]
    assert row.report["task"] == "causal-lm"
    assert row.report["split_by"] == "paragraph"
    assert row.report["row_numbering"] == "line"
    assert Path(row.original_path).read_bytes() == path.read_bytes()
    assert Path(row.original_path).name == f"original{suffix}"


@pytest.mark.parametrize("suffix", [".txt", ".md"])
def test_prose_by_file_is_one_document_kept_exactly(service, tmp_path, suffix):
    path = write(tmp_path, f"story{suffix}", PROSE)
    assert service.inspect(path, split_by="file").rows_total == 1
    row = service.add(path, split_by="file")
    assert row.rows == 1
    assert service.load_rows(row.id) == [{"text": PROSE}]  # not stripped, blank lines and all
    assert row.report["split_by"] == "file"


def test_paragraphs_keep_crlf_line_ends_inside_and_drop_the_separator():
    text = "one\r\ntwo\r\n\r\nthree\r\n"
    assert [(d.line, d.text) for d in split_documents(text, "paragraph")] == [(1, "one\r\ntwo"), (4, "three")]


def test_markdown_code_fences_are_not_split_at_their_blank_lines(service, tmp_path):
    markdown = "# Title\n\n```python\nx = 1\n\ny = 2\n```\n\nAfter.\n"
    path = write(tmp_path, "notes.md", markdown)
    row = service.add(path)
    assert service.load_rows(row.id) == [{"text": "# Title"}, {"text": "```python\nx = 1\n\ny = 2\n```"},
                                         {"text": "After."}]  # fmt: skip
    # In a .txt file a fence is only text: the blank line splits it.
    assert len(split_documents(markdown, "paragraph", markdown=False)) == 4


@pytest.mark.parametrize(
    ("encoding", "prefix", "expected"),
    [
        ("utf-8", b"", "utf-8"),
        ("utf-8", b"\xef\xbb\xbf", "utf-8-sig"),
        ("utf-16-le", b"\xff\xfe", "utf-16-le"),
        ("cp1252", b"", "cp1252"),
    ],
)
def test_encodings_are_detected_as_for_other_text_files(service, tmp_path, encoding, prefix, expected):
    prose = "Café crème – “très bon”.\n\nNaïve but nice.\n"
    path = write(tmp_path, "french.txt", prefix + prose.encode(encoding))
    row = service.add(path)
    assert row.report["encoding"] == expected
    assert service.load_rows(row.id) == [{"text": "Café crème – “très bon”."}, {"text": "Naïve but nice."}]
    if expected == "cp1252":
        assert any("Windows-1252" in note for note in row.report["notes"])


def test_undecidable_bytes_are_refused_with_their_offset(service, tmp_path):
    path = write(tmp_path, "mixed.txt", "ok é\n".encode() + b"caf\xe9\n")
    with pytest.raises(ValidationFailed, match=r"mixed.txt is not valid UTF-8: byte 0xe9 at byte offset 9 \(line 2\)"):
        service.inspect(path)


@pytest.mark.parametrize("split_by", ["paragraph", "file"])
def test_empty_and_blank_files_are_refused_and_store_nothing(service, settings, tmp_path, split_by):
    empty = write(tmp_path, "empty.txt", b"")
    with pytest.raises(ValidationFailed, match="empty.txt is empty"):
        service.add(empty, split_by=split_by)
    blank = write(tmp_path, "blank.md", "\n  \n\t\n\r\n")
    with pytest.raises(ValidationFailed, match="blank.md holds no text, only blank lines"):
        service.add(blank, split_by=split_by)
    assert service.list() == [] and not any(settings.datasets_dir.iterdir())


def test_long_documents_are_kept_whole_with_a_note_on_truncation(registry, settings, tmp_path):
    from studio.services.datasets import DatasetService

    service = DatasetService(registry, settings, max_row_chars=1_000)
    novel = "word " * 10_000  # 50,000 characters: over the row limit of structured files
    path = write(tmp_path, "novel.txt", novel + "\n\nShort coda.\n")
    row = service.add(path, split_by="paragraph")
    assert [len(r["text"]) for r in service.load_rows(row.id)] == [len(novel), len("Short coda.")]
    [note] = [n for n in row.report["notes"] if "max_length" in n]
    assert note.startswith(f"1 of 2 documents are over {LONG_DOCUMENT_CHARS:,} characters")
    assert "split by paragraph" in note
    # The same text as a JSONL row is still held to the row limit.
    as_jsonl = write(tmp_path, "novel.jsonl", json.dumps({"text": novel}) + "\n")
    with pytest.raises(ValidationFailed, match="too_long"):
        service.add(as_jsonl)


def test_split_by_is_refused_for_files_with_rows_and_for_unknown_values(service, tmp_path):
    rows = write(tmp_path, "rows.jsonl", '{"text": "hi"}\n')
    with pytest.raises(ValidationFailed, match="rows.jsonl: splitting into documents applies to .txt and .md"):
        service.inspect(rows, split_by="paragraph")
    prose = write(tmp_path, "p.txt", "hi\n")
    with pytest.raises(ValidationFailed, match="split_by must be one of paragraph, file, not 'sentence'"):
        service.add(prose, split_by="sentence")


@pytest.mark.parametrize("name", ["prose.jsonl", "prose.ndjson", "prose.json"])
def test_prose_named_as_json_is_refused_as_not_json(service, settings, tmp_path, name):
    path = write(tmp_path, name, "\nThe cat sat on the mat.\nIt was warm.\n")
    for action in (service.inspect, service.add):
        with pytest.raises(ValidationFailed) as info:
            action(path)
        assert str(info.value) == (
            f"{name}: line 2, column 1: not JSON (Expecting value) — is this a .txt file? "
            "rename it to .txt to import it as text"
        )
    assert service.list() == [] and not any(settings.datasets_dir.iterdir())


def test_not_json_names_the_column_where_parsing_stopped(service, tmp_path):
    path = write(tmp_path, "a.jsonl", "true story, told twice\n")
    with pytest.raises(ValidationFailed, match=r"a.jsonl: line 1, column 6: not JSON \(Extra data\)"):
        service.inspect(path)


def test_a_broken_object_on_the_first_line_is_still_one_bad_row(service, tmp_path):
    # A line that starts as an object is a real JSONL file with one bad row, which can be dropped.
    path = write(tmp_path, "a.jsonl", '{"text": "cut off\n{"text": "fine"}\n')
    found = service.inspect(path)
    assert found.validation["rows_invalid"] == 1 and found.validation["rows_valid"] == 1
    assert found.validation["problems"][0]["row"] == 1
    assert service.add(path, drop_invalid=True).rows == 1
