"""`studio eval` submits an EvalRequest through the services (no worker: the job stays queued)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from studio.cli import cli
from studio.errors import StudioError


def _run(args, monkeypatch, settings):
    monkeypatch.setenv("STUDIO_DATA_DIR", str(settings.data_dir))
    from studio.cli.common import services

    services.cache_clear()
    return CliRunner().invoke(cli, ["eval", *args], catch_exceptions=False)


@pytest.fixture
def chat_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "#### 5"}]},
        {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "#### 2"}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_base_model_imports_the_file_and_queues_a_job(monkeypatch, settings, chat_file):
    args = ["--base", "some-model", "--dataset", str(chat_file), "--metric", "loss", "--metric", "rouge_l"]
    result = _run([*args, "--max-examples", "7", "--no-wait"], monkeypatch, settings)
    assert result.exit_code == 0, result.output
    assert "imported qa.jsonl as dataset 1" in result.output
    assert "queued evaluation job 1 (base model some-model on dataset 1: loss, rouge_l)" in result.output

    from studio.cli.common import services

    job = services().jobs.get(1)
    assert job.kind == "eval" and job.status == "queued"
    assert job.request["metrics"] == ["loss", "rouge_l"]
    assert job.request["max_examples"] == 7 and job.request["adapter_id"] is None


def test_eval_defaults_to_loss_and_refuses_bad_requests_before_queueing(monkeypatch, settings, chat_file):
    result = _run(["--base", "m", "--dataset", str(chat_file)], monkeypatch, settings)
    assert "dataset 1: loss)" in result.output
    with pytest.raises(StudioError, match="either an ADAPTER_ID or --base"):
        _run(["--dataset", "1"], monkeypatch, settings)
    with pytest.raises(StudioError, match="fit: loss, exact_match, rouge_l"):
        _run(["--base", "m", "--dataset", "1", "--metric", "accuracy"], monkeypatch, settings)
    with pytest.raises(StudioError, match="adapter 9 does not exist"):
        _run(["9", "--dataset", "1"], monkeypatch, settings)

    from studio.cli.common import services

    assert [job.id for job in services().jobs.list()] == [1]  # only the first, valid request was queued
