"""The canonical JSONL contract and the seeded train/validation split."""

from __future__ import annotations

import json

import pytest

from studio.datasets.normalise import label_summary, read_jsonl, to_canonical, write_jsonl
from studio.datasets.splits import split_list, split_rows
from studio.errors import NotFoundError, ValidationFailed


def test_alpaca_input_is_appended_after_a_blank_line_only_when_present():
    with_input = to_canonical("alpaca", {"instruction": "Translate", "input": "chat", "output": "cat"})
    assert with_input == {
        "messages": [
            {"role": "user", "content": "Translate\n\nchat"},
            {"role": "assistant", "content": "cat"},
        ]
    }
    blank = to_canonical("alpaca", {"instruction": "Say hi ", "input": "  ", "output": "Hi"})
    assert blank["messages"][0] == {"role": "user", "content": "Say hi "}  # text is never stripped


def test_other_formats():
    assert to_canonical("prompt_completion", {"prompt": "2+2?", "completion": "4"}) == {
        "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    }
    turns = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ]
    assert to_canonical("chat", {"messages": turns}) == {"messages": turns}
    assert to_canonical("sharegpt", {"messages": turns}) == {"messages": turns}
    assert to_canonical("text", {"text": "t "}) == {"text": "t "}
    assert to_canonical("classification", {"text": "t", "label": 0}) == {"text": "t", "label": 0}
    with pytest.raises(ValueError):
        to_canonical("nope", {})


def test_label_summary_keeps_label_types():
    labels, counts = label_summary([{"label": 1}, {"label": 0}, {"label": 1}])
    assert labels == [0, 1]
    assert counts == [{"label": 0, "count": 1}, {"label": 1, "count": 2}]
    assert label_summary([{"label": "b"}, {"label": 2}, {"label": "a"}])[0] == [2, "a", "b"]


def test_jsonl_round_trip_is_utf8_one_object_per_line(tmp_path):
    rows = [{"text": "café ☕\nnext"}, {"text": "x", "label": 1}]
    path = tmp_path / "data.jsonl"
    assert write_jsonl(rows, path) == 2
    raw = path.read_bytes()
    assert raw.count(b"\n") == 2 and "café ☕".encode() in raw
    assert [json.loads(line) for line in raw.decode().splitlines()] == rows
    assert read_jsonl(path) == rows
    assert read_jsonl(path, limit=1) == rows[:1]
    with pytest.raises(NotFoundError):
        read_jsonl(tmp_path / "missing.jsonl")


def test_split_is_deterministic_disjoint_and_complete():
    train, val = split_rows(100, 0.1, seed=42)
    assert (train, val) == split_rows(100, 0.1, seed=42)
    assert len(val) == 10 and len(train) == 90
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == list(range(100))
    assert train == sorted(train) and val == sorted(val)
    assert split_rows(100, 0.1, seed=7)[1] != val  # another seed, another validation set


def test_split_edge_cases():
    assert split_rows(10, 0.0, seed=1) == (list(range(10)), [])
    assert len(split_rows(5, 0.01, seed=1)[1]) == 1  # at least one validation row
    assert split_rows(2, 0.5, seed=3)[0] != []  # and at least one training row
    assert len(split_rows(3, 0.9, seed=1)[0]) == 1
    assert split_rows(1, 0.5, seed=1) == ([0], [])
    assert split_rows(0, 0.2, seed=1) == ([], [])
    for bad in (-0.1, 1.0):
        with pytest.raises(ValidationFailed):
            split_rows(10, bad, seed=1)


def test_split_list():
    rows = [{"i": i} for i in range(20)]
    train, val = split_list(rows, 0.25, seed=0)
    indices_train, indices_val = split_rows(20, 0.25, seed=0)
    assert train == [rows[i] for i in indices_train]
    assert val == [rows[i] for i in indices_val]
