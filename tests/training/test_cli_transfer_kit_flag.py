"""`studio train --no-transfer-kit`: a quick run skips the kit (minutes on a CPU after the last step)."""

from __future__ import annotations

import re

from click.testing import CliRunner
from conftest_training import chat_rows, register_chat_dataset, write_jsonl

from studio.cli import cli


def queued_request(registry, output: str) -> dict:
    job_id = int(re.search(r"queued training job (\d+)", output).group(1))
    return registry.get_job(job_id).request


def test_the_kit_is_kept_by_default_and_skipped_with_the_flag(settings, registry, tiny_llama_dir, tmp_path):
    row = register_chat_dataset(registry, write_jsonl(tmp_path / "chat.jsonl", chat_rows(12)))
    base = ["train", "--dataset", str(row.id), "--base", str(tiny_llama_dir), "--set", "max_steps=2"]
    kept = CliRunner().invoke(cli, base)
    assert kept.exit_code == 0, kept.output
    assert queued_request(registry, kept.output)["transfer_kit"] is True
    assert "for the transfer kit" in kept.output  # the time estimate names its part
    skipped = CliRunner().invoke(cli, [*base, "--no-transfer-kit"])
    assert skipped.exit_code == 0, skipped.output
    assert queued_request(registry, skipped.output)["transfer_kit"] is False
    assert "transfer kit" not in skipped.output  # the time estimate leaves it out too
