"""The transfer job: a registered adapter with a kit -> a registered LoRA on another base, with lineage and counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cpu_device, fast_hyper

from studio.errors import ValidationFailed
from studio.jobs.context import JobContext
from studio.progress import RegistryReporter
from studio.schema import TransferOptions, TransferRequest, parse_request


def _register(registry, path, base, name="colours"):
    return registry.add_adapter(name=name, variant="lora", base_model=str(base), path=str(path), sha256="0" * 64)


def _run(registry, settings, request):
    from studio.transfer.job import run_transfer_job

    job = registry.create_job(kind="transfer", request=request.model_dump(mode="json"), schema_version=1)
    ctx = JobContext(job.id, settings, registry, cpu_device(), attempt=1)
    return job.id, run_transfer_job(request, RegistryReporter(registry, job.id, min_interval=0.0), ctx)


def test_request_round_trips_through_the_job_schema():
    request = parse_request(
        {"kind": "transfer", "adapter_id": 3, "target_base": "/models/new", "options": {"samples": 8, "threshold": 0.7}}
    )
    assert isinstance(request, TransferRequest) and request.options.samples == 8 and request.options.threshold == 0.7
    with pytest.raises(ValidationFailed, match="Threshold: must be less than 1"):
        parse_request({"kind": "transfer", "adapter_id": 3, "target_base": "x", "options": {"threshold": 1.5}})


def test_samples_zero_means_seeds_only_and_reads_so_in_the_progress_line():
    from studio.transfer.job import counts_text, wanted_inputs
    from studio.transfer.pipeline import TransferCounts

    seeds_only = TransferOptions(samples=0)
    assert wanted_inputs(seeds_only, 5) == 5 and wanted_inputs(TransferOptions(samples=32), 5) == 32
    line = counts_text(TransferCounts(stage="training", kept=5, trained=5), seeds_only)
    assert line == "training: seeds only, 5 seed inputs, 5 trained"
    with pytest.raises(ValueError):
        TransferOptions(samples=-1)


def test_an_adapter_without_a_kit_is_refused_saying_how_to_get_one(registry, settings, tmp_path):
    from studio.services.jobs import JobService

    bare = tmp_path / "bare"
    bare.mkdir()
    row = _register(registry, bare, tmp_path)
    request = TransferRequest(adapter_id=row.id, target_base=str(tmp_path))
    with pytest.raises(
        ValidationFailed, match=f"adapter #{row.id} has no transfer kit.*retrain it with transfer_kit on"
    ):
        _run(registry, settings, request)

    class Dispatcher:
        def send(self, job_id):
            return "t"

    before = len(registry.list_jobs(kind="transfer"))
    with pytest.raises(ValidationFailed, match="retrain it with transfer_kit on"):
        JobService(registry, Dispatcher()).submit(request)  # refused at submission, before anything is queued
    assert len(registry.list_jobs(kind="transfer")) == before


@pytest.mark.slow
def test_transfer_job_registers_a_lora_on_the_target_with_lineage_and_counts(
    registry, settings, kit, teacher, llama_base, neox_base
):
    from peft import PeftConfig

    adapter, _ = teacher
    source = _register(registry, adapter, llama_base)
    options = TransferOptions(
        samples=12,
        max_attempts=32,
        generation_batch=16,
        max_input_tokens=12,
        max_answer_tokens=4,
        hyper=fast_hyper(max_steps=6, log_every=1),
    )
    request = TransferRequest(adapter_id=source.id, target_base=str(neox_base), options=options, name="moved")
    job_id, result = _run(registry, settings, request)

    row = registry.get_adapter(result["adapter_id"])
    assert (row.name, row.variant, row.base_model, row.parents) == ("moved", "lora", str(neox_base), [source.id])
    assert row.source_job_id == job_id and row.trainable_params > 0 and row.ranks
    path = Path(row.path)
    assert PeftConfig.from_pretrained(str(path)).peft_type == "LORA"
    assert 0 < result["kept"] <= 12 and result["generated"] <= 32 and 0 < result["trained"] <= result["kept"]
    assert row.metrics["transfer_kept"] == result["kept"] and row.metrics["transfer_trained"] == result["trained"]
    lineage = json.loads((path / "transfer.json").read_text())
    assert lineage["counts"]["kept"] == result["kept"] and lineage["source_adapter"] == str(adapter)
    assert len((path / "synthetic.jsonl").read_text().splitlines()) == result["trained"]
    # counts as metrics (monotone) and in the progress text; the student's loss is the job's curve
    metrics = registry.metrics(job_id)
    kept = [m.value for m in sorted(metrics, key=lambda m: m.step) if m.name == "kept"]
    assert kept == sorted(kept) and kept[-1] == result["kept"]
    assert {"generated", "trained", "loss"} <= {m.name for m in metrics}
    job = registry.get_job(job_id)
    assert f"{result['kept']} of 12 kept" in (job.message or "")
    assert f"Trans-LoRA from adapter #{source.id}" in (path / "README.md").read_text()


def test_a_transfer_onto_the_adapters_own_base_is_refused_at_submission(registry, tmp_path):
    """The UI, the CLI and the API submit through the job service: a same-base transfer is refused for all."""
    from studio.services.jobs import JobService
    from studio.transfer.job import KIT_DIR, KIT_FILE

    adapter_dir, base = tmp_path / "kept", tmp_path / "base"
    (adapter_dir / KIT_DIR).mkdir(parents=True)
    (adapter_dir / KIT_DIR / KIT_FILE).write_text("{}")
    base.mkdir()
    row = _register(registry, adapter_dir, base)

    class Dispatcher:
        def send(self, job_id):
            return "t"

    service = JobService(registry, Dispatcher())
    for same in (str(base), str(base) + "/", str(tmp_path / "." / "base")):  # one folder, however it is written
        with pytest.raises(ValidationFailed, match=f"adapter #{row.id} is already for"):
            service.submit(TransferRequest(adapter_id=row.id, target_base=same))
    assert registry.list_jobs(kind="transfer") == []
    other = tmp_path / "other"
    other.mkdir()
    assert service.submit(TransferRequest(adapter_id=row.id, target_base=str(other))).kind == "transfer"
