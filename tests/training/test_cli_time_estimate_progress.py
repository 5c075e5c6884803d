"""`studio train` says it is timing a step before the pause it takes (it printed nothing for a minute or more)."""

from __future__ import annotations

from click.testing import CliRunner
from conftest_training import chat_rows, register_chat_dataset, write_jsonl

from studio.cli import cli


def _train(dataset_id: int, base: str):
    """Queue (not run) a two-step training job from the CLI; the estimates run before it is queued."""
    args = ["train", "--dataset", str(dataset_id), "--base", base, "--set", "max_steps=2", "--no-transfer-kit"]
    return CliRunner().invoke(cli, args)


def test_the_step_timing_is_announced_before_the_estimate(settings, registry, tiny_llama_dir, tmp_path):
    row = register_chat_dataset(registry, write_jsonl(tmp_path / "chat.jsonl", chat_rows(12)))

    result = _train(row.id, str(tiny_llama_dir))

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    timing = next(i for i, line in enumerate(lines) if line.startswith("time estimate: timing a training step of"))
    estimate = next(i for i, line in enumerate(lines) if "(measured on this machine:" in line)
    assert timing < estimate and "on this machine (loads the base model)..." in lines[timing]


def test_a_kept_measurement_is_not_announced_again(settings, registry, tiny_llama_dir, tmp_path):
    row = register_chat_dataset(registry, write_jsonl(tmp_path / "chat.jsonl", chat_rows(12)))
    assert "timing a training step" in _train(row.id, str(tiny_llama_dir)).output

    again = _train(row.id, str(tiny_llama_dir))  # the same shape within minutes: no new measurement, no pause

    assert again.exit_code == 0, again.output
    assert "timing a training step" not in again.output and "(measured on this machine:" in again.output
