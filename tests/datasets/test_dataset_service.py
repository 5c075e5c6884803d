"""DatasetService against a real SQLite registry in tmp_path, and the real data samples shipped in data/samples."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from studio.datasets.splits import split_rows
from studio.errors import NotFoundError, ValidationFailed
from studio.services.datasets import DatasetService
from studio.settings import Settings

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"  # shipped with the repo

ALPACA_ROWS = [
    {"instruction": "Say hi", "input": "", "output": "Hi"},
    {"instruction": "Add", "input": "1+1", "output": "2"},
    {"instruction": "Echo", "input": "x", "output": "x"},
]


def test_round_trip(service, settings, write_jsonl, registry):
    path = write_jsonl(ALPACA_ROWS, name="my set.jsonl")
    row = service.add(path)
    assert row.id is not None
    assert (row.name, row.format, row.rows) == ("my set", "alpaca", 3)
    assert row.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert row.size_bytes == path.stat().st_size
    assert row.mapping == {"instruction": "instruction", "input": "input", "output": "output"}
    original, stored = Path(row.original_path), Path(row.stored_path)
    assert original.read_bytes() == path.read_bytes()
    assert original.name == "original.jsonl" and stored.name == "data.jsonl"
    assert original.parent == stored.parent and stored.parent.parent == settings.datasets_dir

    report = row.report
    assert report["task"] == "causal-lm"
    assert report["source_format"] == "alpaca"
    assert report["mapping"] == row.mapping
    assert (report["rows_total"], report["rows_valid"], report["dropped_rows"]) == (3, 3, [])
    assert report["problems"] == [] and report["counts_by_reason"] == {}
    assert report["columns"] == ["instruction", "input", "output"]
    assert report["encoding"] == "utf-8"

    assert [r.id for r in service.list()] == [row.id]
    assert service.get(row.id).name == "my set"
    rows = service.load_rows(row.id)
    assert rows[1] == {"messages": [{"role": "user", "content": "Add\n\n1+1"}, {"role": "assistant", "content": "2"}]}
    assert service.preview(row.id, n=2) == rows[:2]
    train, val = split_rows(len(rows), 0.34, seed=0)
    assert len(train) == 2 and len(val) == 1

    service.delete(row.id)
    assert not stored.parent.exists()
    assert service.list() == []
    with pytest.raises(NotFoundError):
        service.get(row.id)
    assert path.exists()  # the user's own file is never touched


def test_add_with_a_name_and_a_registry_row_per_add(service, write_jsonl):
    path = write_jsonl(ALPACA_ROWS)
    first = service.add(path, name="first")
    second = service.add(path, name="second")
    assert first.sha256 == second.sha256 and first.stored_path != second.stored_path
    assert [r.name for r in service.list()] == ["second", "first"]


def test_ambiguous_columns_need_a_mapping(service, settings, write_jsonl):
    path = write_jsonl([{"question": "2+2?", "answer": "4"}, {"question": "3+3?", "answer": "6"}])
    inspection = service.inspect(path)
    assert inspection.needs_confirmation
    assert inspection.mapping == {"prompt": "question", "completion": "answer"}
    assert inspection.preview == [{"question": "2+2?", "answer": "4"}, {"question": "3+3?", "answer": "6"}]
    assert inspection.validation["rows_valid"] == 2
    assert inspection.to_dict()["detection"]["format"] == "prompt_completion"
    with pytest.raises(ValidationFailed) as info:
        service.add(path)
    assert str(info.value).startswith(
        "columns question, answer do not name a format; re-run with --map prompt=question --map completion=answer"
    )
    assert list(settings.datasets_dir.iterdir()) == []  # nothing stored
    assert service.list() == []

    row = service.add(path, mapping={"question": "prompt", "answer": "completion"})
    assert (row.format, row.mapping) == ("prompt_completion", {"prompt": "question", "completion": "answer"})
    assert row.report["mapping_source"] == "user"
    assert service.preview(row.id, n=1) == [
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    ]


def test_invalid_rows_are_refused_then_dropped_exactly_on_request(service, settings, write_jsonl):
    path = write_jsonl(
        [
            {"text": "good", "label": 1},
            {"text": "bad", "label": 0.5},
            "{not json",
            {"text": "fine", "label": 0},
            {"text": "", "label": 1},
        ]
    )
    with pytest.raises(ValidationFailed) as info:
        service.add(path)
    message = str(info.value)
    assert message.startswith("3 of 5 rows are invalid (wrong_type: 1, unparseable: 1, empty: 1)")
    assert "row 2 label: label is a float (0.5), expected an integer or a string" in message
    assert "re-run with --drop-invalid (drop_invalid=True) to drop exactly these 3 rows" in message
    assert list(settings.datasets_dir.iterdir()) == []

    row = service.add(path, drop_invalid=True)
    assert row.rows == 2
    report = row.report
    assert report["dropped_rows"] == [2, 3, 5]
    assert (report["rows_total"], report["rows_valid"], report["rows_stored"]) == (5, 2, 2)
    assert [(p["row"], p["field"], p["reason"]) for p in report["problems"]] == [
        (2, "label", "wrong_type"),
        (3, "(row)", "unparseable"),
        (5, "text", "empty"),
    ]
    assert report["labels"] == [0, 1]
    assert report["label_counts"] == [{"label": 0, "count": 1}, {"label": 1, "count": 1}]
    assert service.load_rows(row.id) == [{"text": "good", "label": 1}, {"text": "fine", "label": 0}]


def test_all_rows_invalid_is_refused_even_with_drop_invalid(service, write_jsonl):
    path = write_jsonl([{"text": ""}, {"text": "  "}])
    with pytest.raises(ValidationFailed, match="no valid rows to store: 2 of 2 rows are invalid"):
        service.add(path, drop_invalid=True)


def test_size_limit_and_row_length_limit(registry, tmp_path, write_jsonl):
    small = Settings(data_dir=tmp_path / "s", max_upload_mb=0.001)
    path = write_jsonl([{"text": "x" * 2000}])
    with pytest.raises(ValidationFailed, match=r"over the upload limit of 0.001 MB"):
        DatasetService(registry, small).add(path)
    strict = DatasetService(registry, Settings(data_dir=tmp_path / "t"), max_row_chars=1000)
    with pytest.raises(ValidationFailed, match="the row has 2,000 characters; the limit is 1,000"):
        strict.add(path)


@pytest.mark.parametrize("suffix", [".json", ".csv", ".tsv", ".parquet"])
def test_every_file_type_stores_the_same_canonical_rows(service, tmp_path, suffix):
    frame = pd.DataFrame({"sentence": ["good film ", "bad film "], "label": [1, 0]})
    path = tmp_path / f"sst{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"data": frame.to_dict("records")}), encoding="utf-8")
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    row = service.add(path)
    assert row.format == "classification"
    assert row.report["file_format"] == suffix[1:]
    assert Path(row.original_path).name == f"original{suffix}"
    assert service.load_rows(row.id) == [{"text": "good film ", "label": 1}, {"text": "bad film ", "label": 0}]


def test_utf16_and_cp1252_files(service, tmp_path):
    utf16 = tmp_path / "u.jsonl"
    utf16.write_bytes(b"\xff\xfe" + '{"text": "naïve ☕"}\n'.encode("utf-16-le"))
    row = service.add(utf16)
    assert row.report["encoding"] == "utf-16-le"
    assert service.load_rows(row.id) == [{"text": "naïve ☕"}]
    assert row.sha256 == hashlib.sha256(utf16.read_bytes()).hexdigest()
    legacy = tmp_path / "l.csv"
    legacy.write_bytes("text\nCafé au lait\n".encode("cp1252"))
    row = service.add(legacy)
    assert row.report["encoding"] == "cp1252"
    assert any("Windows-1252" in note for note in row.report["notes"])
    assert service.load_rows(row.id) == [{"text": "Café au lait"}]


def test_delete_unknown_dataset(service):
    with pytest.raises(NotFoundError, match="dataset 99 does not exist"):
        service.delete(99)


# Real data: the samples in data/samples -------------------------------------------------------


def _line_count(dataset: str, name: str) -> int:
    """Rows in a sample file, counted without the studio's readers (what ingestion must keep)."""
    return len((SAMPLES / dataset / name).read_text(encoding="utf-8").splitlines())


def test_real_alpaca(service):
    row = service.add(SAMPLES / "alpaca" / "test.jsonl")
    assert (row.format, row.rows, row.report["task"]) == ("alpaca", _line_count("alpaca", "test.jsonl"), "causal-lm")
    first = json.loads((SAMPLES / "alpaca" / "test.jsonl").read_text(encoding="utf-8").split("\n", 1)[0])
    user = first["instruction"] + (f"\n\n{first['input']}" if first["input"].strip() else "")
    assert service.preview(row.id, n=1)[0]["messages"] == [
        {"role": "user", "content": user},
        {"role": "assistant", "content": first["output"]},
    ]


def test_real_oasst_is_chat(service):
    row = service.add(SAMPLES / "oasst_chat" / "test.jsonl")
    assert (row.format, row.rows, row.report["task"]) == ("chat", _line_count("oasst_chat", "test.jsonl"), "causal-lm")
    assert row.report["ignored_columns"] == ["id", "message_tree_id"]
    assert all(turn["role"] in ("user", "assistant") for r in service.load_rows(row.id) for turn in r["messages"])


def test_real_sst2_is_classification(service):
    path = SAMPLES / "sst2" / "dev.jsonl"
    row = service.add(path)
    raw = Counter(json.loads(line)["label"] for line in path.read_text(encoding="utf-8").splitlines())
    assert (row.format, row.rows, row.report["task"]) == ("classification", sum(raw.values()), "classification")
    assert row.report["labels"] == [0, 1] and min(raw.values()) > 0
    assert row.report["label_counts"] == [{"label": 0, "count": raw[0]}, {"label": 1, "count": raw[1]}]


def test_real_gsm8k_and_lncrna_are_proposals(service):
    gsm8k = service.inspect(SAMPLES / "gsm8k" / "test.jsonl")
    assert (gsm8k.format, gsm8k.mapping) == ("prompt_completion", {"prompt": "question", "completion": "answer"})
    assert gsm8k.needs_confirmation and gsm8k.rows_total == _line_count("gsm8k", "test.jsonl")
    lncrna = service.inspect(SAMPLES / "lncrna_athaliana" / "test.jsonl")
    assert (lncrna.format, lncrna.mapping) == ("classification", {"text": "sequence", "label": "label"})
    row = service.add(SAMPLES / "lncrna_athaliana" / "test.jsonl", mapping=lncrna.mapping)
    assert row.rows == _line_count("lncrna_athaliana", "test.jsonl") and row.report["labels"] == [0, 1]
