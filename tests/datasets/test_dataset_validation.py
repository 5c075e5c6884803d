"""Every kind of bad row is reported with its exact row number, field and reason."""

from __future__ import annotations

import json

import pandas as pd

from studio.datasets.readers import file_kind, parse_bytes
from studio.datasets.validation import PROBLEMS_STORED, validate_rows


def run(path, fmt, mapping, max_chars=100_000):
    table = parse_bytes(path.read_bytes(), file_kind(path), path.name)
    return validate_rows(table, fmt, mapping, max_chars)


def triples(result):
    return [(p.row, p.field, p.reason) for p in result.problems]


ALPACA = {"instruction": "instruction", "input": "input", "output": "output"}
CHAT = {"messages": "messages"}


def test_bad_alpaca_rows(write_jsonl):
    path = write_jsonl(
        [
            {"instruction": "ok", "input": "", "output": "fine"},  # line 1
            '{"instruction": "broken", "output": ',  # line 2
            {"instruction": "empty", "input": "", "output": "   "},  # line 3
            {"instruction": "no output", "input": ""},  # line 4
            {"instruction": "null output", "output": None},  # line 5
            {"instruction": ["not", "a", "string"], "output": "x"},  # line 6
            {"instruction": "long", "input": "y" * 60, "output": "z" * 50},  # line 7
            ["an", "array"],  # line 8
            {"instruction": "ok too", "output": "also fine"},  # line 9 (input is optional)
        ]
    )
    result = run(path, "alpaca", ALPACA, max_chars=100)
    assert triples(result) == [
        (2, "(row)", "unparseable"),
        (3, "output", "empty"),
        (4, "output", "missing"),
        (5, "output", "missing"),
        (6, "instruction", "wrong_type"),
        (7, "input", "too_long"),
        (8, "(row)", "wrong_type"),
    ]
    details = [p.detail for p in result.problems]
    assert details[0].startswith("the row is not valid JSON (Expecting value at column")
    assert details[2] == "output is missing"
    assert details[3] == "output is null"
    assert details[4] == "instruction is a list, expected a string"
    assert details[5] == "the row has 114 characters; the limit is 100"
    assert details[6] == "the row is an array, expected an object"
    assert [row for row, _ in result.valid] == [1, 9]
    assert result.invalid_rows == [2, 3, 4, 5, 6, 7, 8]
    assert result.counts_by_reason == {"missing": 2, "wrong_type": 2, "unparseable": 1, "empty": 1, "too_long": 1}
    summary = result.summary(limit=2)
    assert summary.startswith("7 of 9 rows are invalid (missing: 2, wrong_type: 2, unparseable: 1")
    assert "row 3 output: output is empty; and 5 more" in summary


def test_bad_chat_rows(write_jsonl):
    user = {"role": "user", "content": "hi"}
    path = write_jsonl(
        [
            {"messages": [user, {"role": "assistant", "content": "hello"}]},  # 1 ok
            {"messages": "hi there"},  # 2 not a list
            {"messages": [user]},  # 3 no assistant turn
            {"messages": [user, {"role": "assistant", "content": ""}]},  # 4 empty assistant content
            {"messages": [user, {"role": "bot", "content": "x"}]},  # 5 bad role
            {"messages": []},  # 6 empty list
            {"messages": [user, {"role": "assistant", "content": 3}]},  # 7 wrong content type
            {"messages": [user, "assistant: hi"]},  # 8 turn not an object
            {"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]},  # 9 no role
            {"messages": [{"role": "System", "content": ""}, user, {"role": "assistant", "content": "y"}]},  # 10 ok
        ]
    )
    result = run(path, "chat", CHAT)
    assert triples(result) == [
        (2, "messages", "wrong_type"),
        (3, "messages", "no_assistant_turn"),
        (4, "messages[1].content", "empty"),
        (5, "messages[1].role", "bad_role"),
        (6, "messages", "no_assistant_turn"),
        (7, "messages[1].content", "wrong_type"),
        (8, "messages[1]", "wrong_type"),
        (9, "messages[0].role", "missing"),
    ]
    assert result.problems[0].detail == "messages is a string, expected a list of {role, content} objects"
    assert result.problems[3].detail == "messages[1].role is 'bot'; allowed: assistant, system, user"
    assert result.problems[4].detail == "messages is empty"
    assert [row for row, _ in result.valid] == [1, 10]
    assert result.valid[1][1]["messages"][0] == {"role": "system", "content": ""}


def test_bad_sharegpt_rows(write_jsonl):
    path = write_jsonl(
        [
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "yo"}]},
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": " "}]},
            {"conversations": [{"from": "system", "value": "be nice"}, {"from": "human", "value": "hi"}]},
        ]
    )
    result = run(path, "sharegpt", {"conversations": "conversations"})
    assert triples(result) == [
        (2, "conversations[1].from", "bad_role"),
        (3, "conversations[1].value", "empty"),
        (4, "conversations", "no_assistant_turn"),
    ]
    assert result.valid[0][1]["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    ]


def test_bad_prompt_completion_rows_use_the_users_column_names(write_jsonl):
    path = write_jsonl(
        [
            {"question": "q1", "answer": "a1"},
            {"question": "q2", "answer": ""},
            {"question": "", "answer": "a3"},
            {"question": "q4", "answer": 4},
        ]
    )
    result = run(path, "prompt_completion", {"prompt": "question", "completion": "answer"})
    assert triples(result) == [(2, "answer", "empty"), (3, "question", "empty"), (4, "answer", "wrong_type")]
    assert result.problems[2].detail == "answer is an integer (4), expected a string"


def test_bad_classification_rows(write_jsonl):
    path = write_jsonl(
        [
            {"text": "good", "label": 1},
            {"text": "half", "label": 0.5},
            {"text": "bool", "label": True},
            {"text": "none", "label": None},
            {"text": "", "label": 0},
            {"text": "string label", "label": "positive"},
            {"text": "float int", "label": 1.0},
            {"text": "blank label", "label": "  "},
            {"text": "listy", "label": [1]},
        ]
    )
    result = run(path, "classification", {"text": "text", "label": "label"})
    assert triples(result) == [
        (2, "label", "wrong_type"),
        (3, "label", "wrong_type"),
        (4, "label", "missing"),
        (5, "text", "empty"),
        (8, "label", "empty"),
        (9, "label", "wrong_type"),
    ]
    assert result.problems[0].detail == "label is a float (0.5), expected an integer or a string"
    assert [(row, f["label"]) for row, f in result.valid] == [(1, 1), (6, "positive"), (7, 1)]


def test_csv_labels_become_numbers_only_when_the_whole_column_is_numeric(write_csv):
    numeric = run(write_csv(["text", "label"], [["a", "0"], ["b", "1"], ["c", "0.5"]]), "classification",
                  {"text": "text", "label": "label"})  # fmt: skip
    assert [f["label"] for _, f in numeric.valid] == [0, 1]
    assert triples(numeric) == [(4, "label", "wrong_type")]  # header is line 1, so "c" is on line 4
    words = run(write_csv(["text", "label"], [["a", "pos"], ["b", "1"]], name="w.csv"), "classification",
                {"text": "text", "label": "label"})  # fmt: skip
    assert [f["label"] for _, f in words.valid] == ["pos", "1"]


def test_csv_messages_cell_holds_json(write_csv):
    turns = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    result = run(write_csv(["messages"], [[turns], ["not json"]]), "chat", CHAT)
    assert len(result.valid) == 1
    assert triples(result) == [(3, "messages", "wrong_type")]


def test_parquet_rows_are_numbered_by_record(tmp_path):
    path = tmp_path / "a.parquet"
    pd.DataFrame({"prompt": ["p1", "p2", "p3"], "completion": ["c1", None, "c3"]}).to_parquet(path)
    result = run(path, "prompt_completion", {"prompt": "prompt", "completion": "completion"})
    assert triples(result) == [(2, "completion", "missing")]


def test_stored_problems_are_capped_but_counts_are_complete(write_jsonl):
    path = write_jsonl([{"text": ""}] * (PROBLEMS_STORED + 5) + [{"text": "ok"}])
    report = run(path, "text", {"text": "text"}).report()
    assert len(report["problems"]) == PROBLEMS_STORED
    assert report["problems_truncated"] is True
    assert report["counts_by_reason"] == {"empty": PROBLEMS_STORED + 5}
    assert report["rows_invalid"] == PROBLEMS_STORED + 5
    assert (report["rows_total"], report["rows_valid"]) == (PROBLEMS_STORED + 6, 1)
