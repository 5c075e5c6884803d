"""`studio dataset ...` through click's CliRunner, on a data dir in tmp_path."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from studio.cli.common import services
from studio.cli.dataset import dataset


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path / "studio"))
    for name in ("DATABASE_URL", "STUDIO_MAX_UPLOAD_MB"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()
    # services() is cached per process: without this, a test would use the data dir of the one before.
    services.cache_clear()

    def invoke(*args):
        return runner.invoke(dataset, [str(a) for a in args], catch_exceptions=False)

    yield invoke
    services.cache_clear()


def test_dataset_is_a_click_group():
    assert isinstance(dataset, click.Group)
    assert {"add", "list", "show", "delete", "drop", "inspect"} <= set(dataset.commands)


def test_add_list_show_delete(cli, tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"question": f"{i}+{i}?", "answer": str(2 * i)} for i in range(8)]
    rows[3]["answer"] = ""
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")

    refused = cli("add", path)
    assert refused.exit_code == 1
    assert refused.output.strip().splitlines() == [
        "error: columns question, answer do not name a format; re-run with --map prompt=question "
        "--map completion=answer (proposed: prompt_completion, confidence 0.90)"
    ]

    # the col=field order works as well as field=col
    invalid = cli("add", path, "--map", "question=prompt", "--map", "completion=answer")
    assert invalid.exit_code == 1
    assert "error: 1 of 8 rows are invalid (empty: 1): row 4 answer: answer is empty" in invalid.output
    assert "--drop-invalid" in invalid.output

    added = cli("add", path, "--name", "sums", "--map", "question=prompt", "--map", "answer=completion",
                "--drop-invalid")  # fmt: skip
    assert added.exit_code == 0, added.output
    lines = added.output.splitlines()
    assert lines[0] == "added dataset 1: sums"
    assert lines[1] == "format: prompt_completion (causal-lm), rows: 7"
    assert lines[2] == "mapping: prompt=question, completion=answer"
    assert "validation: 7 of 8 rows stored" in added.output
    assert "dropped 1 invalid rows (empty: 1): rows 4" in added.output

    listed = cli("list")
    assert listed.exit_code == 0
    header, first = listed.output.splitlines()[:2]
    assert header.split() == ["id", "name", "format", "task", "rows", "created"]
    assert first.split()[:5] == ["1", "sums", "prompt_completion", "causal-lm", "7"]

    shown = cli("show", 1)
    assert shown.exit_code == 0
    assert "dataset 1: sums" in shown.output
    assert "sha256: " in shown.output
    preview = shown.output.split("preview:\n", 1)[1].splitlines()
    assert len(preview) == 5
    assert json.loads(preview[0]) == {
        "messages": [{"role": "user", "content": "0+0?"}, {"role": "assistant", "content": "0"}]
    }

    deleted = cli("delete", 1)
    assert deleted.output.strip() == "deleted dataset 1: sums"
    assert not any((tmp_path / "studio" / "datasets").iterdir())
    assert "no datasets yet" in cli("list").output
    missing = cli("drop", 1)
    assert missing.exit_code == 1
    assert missing.output.startswith("error: dataset 1 does not exist")


def test_inspect_shows_the_proposal(cli, samples_dir):
    gsm8k = samples_dir / "gsm8k" / "test.jsonl"
    result = cli("inspect", gsm8k)
    assert result.exit_code == 0
    assert "proposed: prompt_completion (confidence 0.90" in result.output
    assert f"confirm with: studio dataset add {gsm8k} --map prompt=question --map completion=answer" in result.output


def test_bad_map_option_is_one_clean_line(cli, tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "hi"}\n', encoding="utf-8")
    result = cli("add", path, "--map", "nonsense")
    assert result.exit_code == 1
    assert result.output.startswith("error: --map 'nonsense' must look like field=column")


@pytest.mark.parametrize("case", ["deep", "huge_int", "surrogate"])
def test_add_with_a_hostile_row_is_one_clean_line(cli, tmp_path, case):
    from test_dataset_bad_input import BAD_JSONL, GOOD

    line, expected = BAD_JSONL[case]
    path = tmp_path / f"{case}.jsonl"
    path.write_text(f"{GOOD}\n{line}\n", encoding="utf-8")
    result = cli("add", path)
    assert result.exit_code == 1
    [message] = result.output.strip().splitlines()
    assert message.startswith("error: ") and expected in message


@pytest.mark.parametrize(("split_by", "rows"), [(None, 2), ("paragraph", 2), ("file", 1)])
def test_add_prose_split_by_paragraph_or_file(cli, tmp_path, split_by, rows):
    path = tmp_path / "essay.md"
    path.write_text("# On cats\n\nThey sit on mats.\n", encoding="utf-8")
    options = ["--split-by", split_by] if split_by else []
    inspected = cli("inspect", path, *options)
    assert inspected.exit_code == 0, inspected.output
    assert inspected.output.splitlines()[0] == f"essay.md: md, utf-8, {rows} rows"
    assert "format: text (column 'text' names the text format)" in inspected.output
    added = cli("add", path, *options)
    assert added.exit_code == 0, added.output
    assert added.output.splitlines()[1] == f"format: text (causal-lm), rows: {rows}"
    shown = cli("show", 1)
    preview = [json.loads(line) for line in shown.output.split("preview:\n", 1)[1].splitlines()]
    if rows == 2:
        assert preview == [{"text": "# On cats"}, {"text": "They sit on mats."}]
    else:
        assert preview == [{"text": "# On cats\n\nThey sit on mats.\n"}]


def test_split_by_rejects_other_choices_and_files_with_rows(cli, tmp_path):
    prose = tmp_path / "p.txt"
    prose.write_text("hello\n", encoding="utf-8")
    assert cli("add", prose, "--split-by", "sentence").exit_code == 2  # click's usage error
    rows = tmp_path / "r.jsonl"
    rows.write_text('{"text": "hi"}\n', encoding="utf-8")
    result = cli("add", rows, "--split-by", "file")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: r.jsonl: splitting into documents applies to .txt and .md files only; a JSONL file has rows of its own"
    )


def test_prose_named_jsonl_is_one_clean_line_saying_not_json(cli, tmp_path):
    path = tmp_path / "story.jsonl"
    path.write_text("Once upon a time\nthere was a cat.\n", encoding="utf-8")
    for command in ("inspect", "add"):
        result = cli(command, path)
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            "error: story.jsonl: line 1, column 1: not JSON (Expecting value) — is this a .txt file? "
            "rename it to .txt to import it as text"
        ]
