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
    with pytest.raises(StudioError, match="give adapter ids, --base MODEL, or both"):
        _run(["--dataset", "1"], monkeypatch, settings)
    with pytest.raises(StudioError, match="fit: loss, exact_match, rouge_l"):
        _run(["--base", "m", "--dataset", "1", "--metric", "accuracy"], monkeypatch, settings)
    with pytest.raises(StudioError, match="adapter 9 does not exist"):
        _run(["9", "--dataset", "1"], monkeypatch, settings)

    from studio.cli.common import services

    assert [job.id for job in services().jobs.list()] == [1]  # only the first, valid request was queued


def test_eval_queues_a_comparison_of_the_base_and_adapters(monkeypatch, settings, chat_file):
    result = _run(["--base", "m", "--dataset", str(chat_file)], monkeypatch, settings)  # imports dataset 1
    from studio.cli.common import services

    registry = services().registry
    ids = [registry.add_adapter(name=n, variant="lora", base_model="m", path="/nowhere", sha256="0").id for n in "ab"]
    result = _run(["--base", "m", *map(str, ids), "--dataset", "1", "--metric", "exact_match"], monkeypatch, settings)
    assert result.exit_code == 0, result.output
    assert f"(base model m, adapter {ids[0]}, adapter {ids[1]} on dataset 1: exact_match)" in result.output
    request = services().jobs.get(2).request
    assert request["base_model"] == "m" and request["adapter_ids"] == ids and request["max_new_tokens"] is None

    other = registry.add_adapter(name="c", variant="lora", base_model="other", path="/nowhere", sha256="0").id
    with pytest.raises(StudioError, match=f"adapter {other} is for base model other, not m"):
        _run(["--base", "m", str(other), "--dataset", "1"], monkeypatch, settings)


def test_comparison_table_marks_direction_best_delta_and_cut_off_answers():
    from studio.evaluation.comparison import compare_models, comparison_lines

    models = [
        {"key": "base:m", "metrics": {"eval_loss": 2.0, "exact_match": 0.0}, "truncated_answers": 3},
        {"key": "adapter:4", "metrics": {"eval_loss": 1.5, "exact_match": 0.5}, "truncated_answers": 0},
    ]
    result = {"models": models, "comparison": compare_models(models), "max_new_tokens": 40, "generated": 4}
    header, loss, match, footnote, cut = comparison_lines(result)
    assert header.split() == ["metric", "better", "base:m", "adapter:4", "Δ", "adapter:4"]
    assert loss.split() == ["eval_loss", "lower", "2", "1.5*", "-0.5"]
    assert match.split() == ["exact_match", "higher", "0", "0.5*", "+0.5"]
    assert cut == "answers cut off by the 40-token budget (of 4): base:m 3, adapter:4 0"
