"""The "train" job end to end: registry dataset in, registered PEFT adapter + model card + bundle out."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest_training import chat_rows, cpu_device, make_request, register_chat_dataset, write_jsonl

from studio.jobs.context import JobContext
from studio.progress import RegistryReporter


@pytest.fixture
def dataset_id(registry, tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", chat_rows(12))
    row = register_chat_dataset(registry, path)
    return row.id


def submit(registry, request):
    return registry.create_job(kind="train", request=request.model_dump(mode="json"), schema_version=1).id


def run_job(registry, settings, request, previous_checkpoint=None):
    from studio.training.job import run_train_job

    job_id = submit(registry, request)
    ctx = JobContext(job_id, settings, registry, cpu_device(), attempt=1, previous_checkpoint=previous_checkpoint)
    return job_id, run_train_job(request, RegistryReporter(registry, job_id, min_interval=0.0), ctx)


def job_request(base_dir, dataset_id, variant="lora", **hyper):
    request = make_request(variant, max_steps=4, validation_fraction=0.25, **hyper)
    return request.model_copy(update={"base_model": str(base_dir), "dataset_id": dataset_id, "name": "colours"})


def test_train_job_registers_a_loadable_adapter(registry, settings, dataset_id, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    request = job_request(tiny_llama_dir, dataset_id)
    job_id, result = run_job(registry, settings, request)

    row = registry.get_adapter(result["adapter_id"])
    path = Path(row.path)
    assert path.parent == settings.adapters_dir and result["adapter_path"] == str(path)
    assert (row.name, row.variant, row.base_model, row.dataset_id) == ("colours", "lora", str(tiny_llama_dir), 1)
    assert row.source_job_id == job_id and row.trainable_params > 0 and row.size_bytes > 0
    assert set(row.ranks.values()) == {8} and len(row.ranks) == 14
    assert row.sha256 == hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert row.metrics["eval_loss"] == pytest.approx(result["eval_loss"]) and result["final_loss"] > 0

    repro = json.loads((path / "reproducibility.json").read_text())
    assert repro["seed"] == 7 and repro["request"]["variant"] == "lora" and repro["job_id"] == job_id
    assert {"torch", "transformers", "peft", "code"} <= set(repro["versions"])
    assert repro["dataset_sha256"] == registry.get_dataset(dataset_id).sha256
    card = (path / "README.md").read_text()
    assert "LoRA" in card and "eval_loss" in card and repro["dataset_sha256"] in card
    # The base is named by its folder, not by this machine's path, with the three ways to load the adapter.
    assert f"`{tiny_llama_dir.name}`" in card and str(tiny_llama_dir) not in card
    assert "PeftModel.from_pretrained(" in card and "model.load_adapter(" in card and "--enable-lora" in card

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), str(path))
    assert torch.isfinite(model(input_ids=torch.tensor([[8, 9, 10]])).logits).all()
    assert {m.name for m in registry.metrics(job_id)} >= {"loss", "eval_loss", "learning_rate"}


def test_resume_from_another_jobs_checkpoint(registry, settings, dataset_id, tiny_llama_dir):
    first_request = job_request(tiny_llama_dir, dataset_id, save_every=2)
    first_id, _ = run_job(registry, settings, first_request)
    checkpoint = registry.get_job(first_id).checkpoint_path
    assert checkpoint and checkpoint.endswith("step-000002")

    second = first_request.model_copy(update={"resume_from_job": first_id})
    second_id, result = run_job(registry, settings, second)
    steps = sorted({m.step for m in registry.metrics(second_id) if m.name == "loss"})
    assert steps == [3, 4]
    first_losses = {m.step: m.value for m in registry.metrics(first_id) if m.name == "loss"}
    second_losses = {m.step: m.value for m in registry.metrics(second_id) if m.name == "loss"}
    assert second_losses[4] == pytest.approx(first_losses[4], abs=1e-6)
    assert result["steps"] == 4


def test_requeued_job_resumes_from_its_previous_checkpoint(registry, settings, dataset_id, tiny_llama_dir):
    first_id, _ = run_job(registry, settings, job_request(tiny_llama_dir, dataset_id, save_every=3))
    checkpoint = registry.get_job(first_id).checkpoint_path
    _, result = run_job(registry, settings, job_request(tiny_llama_dir, dataset_id), previous_checkpoint=checkpoint)
    assert result["final_loss"] > 0
