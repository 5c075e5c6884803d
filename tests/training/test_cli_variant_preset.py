"""`studio train --variant-preset`: the preset's values reach the queued request; --set wins over them."""

from __future__ import annotations

import re

from click.testing import CliRunner
from conftest_training import chat_rows, register_chat_dataset, write_jsonl

from studio.cli import cli
from studio.variants.registry import get_variant


def queued_params(registry, output: str):
    """The variant parameters the queued job will train with (the request's values over the defaults)."""
    job_id = int(re.search(r"queued training job (\d+)", output).group(1))
    return get_variant("nlora").parse_params(registry.get_job(job_id).request["variant_params"])


def test_variant_preset_fills_the_variant_parameters(settings, registry, tiny_llama_dir, tmp_path):
    row = register_chat_dataset(registry, write_jsonl(tmp_path / "chat.jsonl", chat_rows(12)))
    base = ["train", "--dataset", str(row.id), "--base", str(tiny_llama_dir), "--variant", "nlora"]

    default = CliRunner().invoke(cli, [*base, "--set", "r=4"])
    assert default.exit_code == 0, default.output
    params = queued_params(registry, default.output)
    assert params.residual is False and params.lr_scale == 1.0  # the official defaults

    small = CliRunner().invoke(cli, [*base, "--variant-preset", "small-model", "--set", "r=4", "--set", "lr_scale=0.2"])
    assert small.exit_code == 0, small.output
    params = queued_params(registry, small.output)
    assert params.residual is True and params.lr_scale == 0.2 and params.r == 4  # --set wins

    unknown = CliRunner().invoke(cli, [*base, "--variant-preset", "huge"])
    assert unknown.exit_code != 0 and "official, small-model" in str(unknown.exception)
    assert "queued" not in unknown.output
