"""The train job keeps a transfer kit with a causal-LM adapter (TrainRequest.transfer_kit), never failing for it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest_training import chat_rows, cpu_device, make_request, register_chat_dataset, write_jsonl

from studio.jobs.context import JobContext
from studio.progress import RegistryReporter

pytestmark = pytest.mark.slow  # each test runs train jobs (a few seconds each)


@pytest.fixture
def dataset_id(registry, tmp_path):
    return register_chat_dataset(registry, write_jsonl(tmp_path / "data.jsonl", chat_rows(12))).id


def _train(registry, settings, base_dir, dataset_id, **changes):
    from studio.training.job import run_train_job

    request = make_request("lora", max_steps=4).model_copy(
        update={"base_model": str(base_dir), "dataset_id": dataset_id, **changes}
    )
    job = registry.create_job(kind="train", request=request.model_dump(mode="json"), schema_version=1)
    ctx = JobContext(job.id, settings, registry, cpu_device(), attempt=1)
    return job.id, run_train_job(request, RegistryReporter(registry, job.id, min_interval=0.0), ctx)


def test_train_job_keeps_a_transfer_kit_beside_the_adapter(registry, settings, dataset_id, tiny_llama_dir):
    from peft import PeftConfig

    from studio.transfer.kit import load_transfer_kit

    job_id, result = _train(registry, settings, tiny_llama_dir, dataset_id)
    path = Path(result["adapter_path"])
    kit = load_transfer_kit(path)
    inputs = {r["messages"][0]["content"] for r in chat_rows(12)}
    assert len(kit.seeds) == 5 and all(s["input"] in inputs for s in kit.seeds)
    assert PeftConfig.from_pretrained(str(kit.discriminator_dir)).peft_type == "LORA"
    # scaled to the 12 rows: 12 real inputs (not the default 64) and at most as many generated ones
    assert kit.meta["positives"] == 12 and 0 < kit.meta["negatives"] <= 12
    assert result["transfer_kit"]["seeds"] == 5 and result["transfer_kit"]["path"] == str(kit.path)
    row = registry.get_adapter(result["adapter_id"])
    assert row.size_bytes == sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    # the discriminator's run neither adds to the job's loss curve nor becomes its resume point
    losses = [m for m in registry.metrics(job_id) if m.name == "loss"]
    assert sorted(m.step for m in losses) == [1, 2, 3, 4]
    job = registry.get_job(job_id)
    assert job.checkpoint_path is None or "transfer-kit" not in job.checkpoint_path
    assert job.message and job.message.startswith("transfer kit")
    assert json.loads((kit.path / "kit.json").read_text())["options"]["seed"] == 7  # the request's seed


def test_no_kit_when_switched_off_or_when_the_kit_fails(registry, settings, dataset_id, tiny_llama_dir, monkeypatch):
    from studio.transfer import kit as kit_module

    _, off = _train(registry, settings, tiny_llama_dir, dataset_id, transfer_kit=False)
    assert "transfer_kit" not in off and not (Path(off["adapter_path"]) / "transfer_kit").exists()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(kit_module, "build_transfer_kit", broken)
    job_id, result = _train(registry, settings, tiny_llama_dir, dataset_id)
    assert registry.get_adapter(result["adapter_id"]).path == result["adapter_path"]  # still registered
    assert "disk full" in result["transfer_kit"]["error"]
    warnings = [log.message for log in registry.job_logs(job_id) if log.level == "warning"]
    assert any("without a transfer kit: disk full" in w for w in warnings)


def test_plain_text_data_gets_no_kit_and_says_why(registry, settings, tiny_llama_dir, tmp_path):
    path = write_jsonl(tmp_path / "text.jsonl", [{"text": f"the sky is blue {i}"} for i in range(8)])
    dataset_id = register_chat_dataset(registry, path, rows=8).id
    job_id, result = _train(registry, settings, tiny_llama_dir, dataset_id)
    assert "transfer_kit" not in result
    assert any("no transfer kit" in log.message for log in registry.job_logs(job_id))
