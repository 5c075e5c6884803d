"""Hostile values in uploads (issue 11): each is a message naming the row and field, never a crash.

Deep nesting, integer literals over Python's int/str conversion limit and lone-surrogate
escapes, in JSONL, JSON and CSV cells; the service refuses them without storing anything
and stores the other rows when asked to drop the invalid ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from studio.datasets.json_limits import MAX_INT_DIGITS, MAX_NESTING
from studio.errors import ValidationFailed

GOOD = '{"instruction": "say hi", "output": "hi"}'
DEEP = '{"instruction": "deep", "output": ' + "[" * 10_000 + "]" * 10_000 + "}"
HUGE_INT = '{"instruction": "big", "output": "x", "extra": ' + "9" * 5000 + "}"
SURROGATE = '{"instruction": "lone \\ud800 here", "output": "x"}'

# file content -> the problem the report must give for row 2
BAD_JSONL = {
    "deep": (DEEP, f"row 2 output: output is nested deeper than {MAX_NESTING} levels"),
    "huge_int": (HUGE_INT, f"row 2 extra: extra is an integer with 5,000 digits; the limit is {MAX_INT_DIGITS:,}"),
    "surrogate": (SURROGATE, "row 2 instruction: instruction has invalid Unicode (lone surrogate \\ud800)"),
}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def stored_nothing(service) -> bool:
    return service.list() == [] and not any(service.settings.datasets_dir.iterdir())


@pytest.mark.parametrize("case", sorted(BAD_JSONL))
def test_jsonl_row_is_refused_naming_row_and_field_then_dropped_on_request(service, tmp_path, case):
    line, expected = BAD_JSONL[case]
    path = write(tmp_path, f"{case}.jsonl", f"{GOOD}\n{line}\n{GOOD}\n")

    found = service.inspect(path)
    [problem] = found.validation["problems"]
    assert f"row {problem['row']} {problem['field']}: {problem['detail']}".startswith(expected)
    json.dumps(found.to_dict(), ensure_ascii=False).encode("utf-8")  # the preview is safe to send

    with pytest.raises(ValidationFailed) as refused:
        service.add(path)
    assert expected in str(refused.value)
    assert stored_nothing(service)

    row = service.add(path, drop_invalid=True)
    assert (row.rows, row.report["dropped_rows"]) == (2, [2])
    stored = Path(row.stored_path).read_text(encoding="utf-8")  # valid UTF-8 throughout
    assert [json.loads(line)["messages"][0]["content"] for line in stored.splitlines()] == ["say hi", "say hi"]


def test_json_array_records_are_refused_one_by_one(service, tmp_path):
    records = f"[{GOOD}, {HUGE_INT}, {SURROGATE}, {GOOD}]"
    found = service.inspect(write(tmp_path, "records.json", records))
    problems = [(p["row"], p["field"], p["reason"]) for p in found.validation["problems"]]
    assert problems == [(2, "extra", "number_too_long"), (3, "instruction", "invalid_unicode")]


def test_json_file_too_deep_to_parse_is_refused_naming_row_and_field(service, tmp_path):
    path = write(tmp_path, "deep.json", f'{{"data": [{GOOD}, {DEEP}]}}')
    with pytest.raises(ValidationFailed, match=r"deep.json: row 2 output is nested deeper than 100 levels"):
        service.add(path)
    assert stored_nothing(service)


def test_csv_cells_chat_json_and_numeric_labels(service, tmp_path):
    deep_cell = '"' + "[" * 3000 + "]" * 3000 + '"'
    lone = '"[{""role"": ""user"", ""content"": ""a""}, {""role"": ""assistant"", ""content"": ""\\udfff""}]"'
    good = '"[{""role"": ""user"", ""content"": ""a""}, {""role"": ""assistant"", ""content"": ""b""}]"'
    chat = service.inspect(write(tmp_path, "chat.csv", f"messages\n{good}\n{deep_cell}\n{lone}\n"))
    problems = [(p["row"], p["field"], p["reason"]) for p in chat.validation["problems"]]
    assert problems == [(3, "messages[0]", "too_deep"), (4, "messages[1].content", "invalid_unicode")]

    labels = write(tmp_path, "labels.csv", f"text,label\na,1\nb,{'1' * 5000}\nc,0\n")
    with pytest.raises(ValidationFailed, match="row 3 label: label is an integer with 5,000 digits"):
        service.add(labels)
    assert stored_nothing(service)


def test_cli_add_prints_one_line_without_traceback(tmp_path):
    """The real command in a subprocess: the deep row's message, exit status 1, no traceback."""
    path = write(tmp_path, "deep.jsonl", f"{GOOD}\n{DEEP}\n")
    env = {"STUDIO_DATA_DIR": str(tmp_path / "studio"), "PATH": "/usr/bin:/bin"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-m", "studio", "dataset", "add", str(path)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: 1 of 2 rows are invalid (too_deep: 1): row 2 output: output is nested deeper")
