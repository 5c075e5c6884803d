"""`studio federated run|split-preview`: options become a FederatedRequest; `--inline` runs a tiny job here."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_federated_job import colour_rows

from studio.cli import cli


def invoke(args: list[str]):
    from studio.cli.common import services

    services.cache_clear()
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "colours.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in colour_rows()), encoding="utf-8")
    return path


def test_run_parses_options_into_the_request(settings, registry, data_file):
    args = ["federated", "run", "--dataset", str(data_file), "--clients", "3", "--rounds", "2"]
    args += ["--strategy", "lora_fair", "--fair-solver", "ridge", "--split", "dirichlet", "--alpha", "0.3"]
    args += ["--label", "label", "--noise", "1.2", "--clip", "0.5", "--target", "q_proj", "--base", "somebase"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    [job] = registry.list_jobs()
    request = job.request
    assert job.kind == "federated" and job.status == "queued"
    assert request["strategy"] == "lora_fair" and request["fair_solver"] == "ridge"
    assert (request["split"], request["alpha"], request["clients"], request["rounds"]) == ("dirichlet", 0.3, 3, 2)
    assert request["privacy"]["noise_multiplier"] == 1.2 and request["privacy"]["max_grad_norm"] == 0.5
    assert request["privacy"]["target_epsilon"] is None and request["target_modules"] == ["q_proj"]
    assert "queued federated job 1 (lora_fair, 3 clients, 2 rounds, DP σ = 1.2)" in result.output


def test_run_refuses_an_over_budget_plan_at_submit(settings, registry, data_file):
    args = ["federated", "run", "--dataset", str(data_file), "--rounds", "20", "--local-steps", "10"]
    args += ["--epsilon", "0.5", "--noise", "0.3", "--sample-rate", "0.05", "--base", "somebase"]
    with pytest.raises(Exception) as refused:
        invoke(args)
    assert "Privacy budget exceeded" in str(refused.value) and "200 DP-SGD steps" in str(refused.value)
    assert [j for j in registry.list_jobs()] == []


def test_split_preview_prints_each_clients_label_mix(settings, registry, data_file):
    args = ["federated", "split-preview", "--dataset", str(data_file), "--clients", "3", "--split", "dirichlet"]
    result = invoke([*args, "--alpha", "0.3", "--seed", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()[1:]  # after "imported colours.jsonl as dataset 1"
    assert lines[0] == "7 rows held out for validation"  # round(0.2 × 36)
    assert [line.split(":")[0] for line in lines[1:]] == ["client 1", "client 2", "client 3"]
    total = sum(int(line.split(": ")[1].split(" rows")[0]) for line in lines[1:])
    assert total == 29 and all("cool" in line or "warm" in line for line in lines[1:])


def test_split_preview_with_label_shares(settings, registry, data_file):
    args = ["federated", "split-preview", "--dataset", str(data_file), "--clients", "2", "--split", "label_shares"]
    result = invoke([*args, "--label-shares", "1,0;0,1"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()[2:]
    # labels sorted (cool, warm): client 1 holds only cool rows, client 2 only warm ones
    assert "cool" in lines[0] and "warm" not in lines[0]
    assert "warm" in lines[1] and "cool" not in lines[1]
    refused = invoke([*args, "--label-shares", "1,x"])
    assert refused.exit_code != 0 and "label-shares" in refused.output


@pytest.mark.slow
def test_run_inline_trains_and_registers(settings, registry, data_file, tiny_llama_dir):
    args = ["federated", "run", "--dataset", str(data_file), "--base", str(tiny_llama_dir), "--clients", "2"]
    args += ["--rounds", "1", "--local-steps", "2", "--target", "q_proj", "--max-length", "32", "--inline"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    [job] = registry.list_jobs()
    assert job.status == "succeeded", job.error
    adapter = registry.get_adapter(job.result["adapter_id"])
    assert adapter.variant == "lora" and adapter.source_job_id == job.id
    assert f"adapter {adapter.id} at" in result.output and "validation loss" in result.output
