"""Transfer results: a failure's reason has its own column and a readable line; an empty list says so."""

from __future__ import annotations

import json

import pytest

from app import tab_transfer
from studio.errors import StudioError
from studio.models.base_models import _hub_snapshot


@pytest.fixture
def kit_adapter(services, tiny_llama, tiny_loras):
    """One registered adapter with a (minimal) transfer kit on disk."""
    kit = tiny_loras[0] / "transfer_kit"
    kit.mkdir(exist_ok=True)
    (kit / "kit.json").write_text(json.dumps({"source_base": str(tiny_llama)}))
    row = services.registry.add_adapter(
        name="lora0", variant="lora", base_model=str(tiny_llama), path=str(tiny_loras[0]), sha256="0" * 64
    )
    return row.id


@pytest.fixture
def offline_error(services) -> str:
    """The real refusal of an offline studio asked for a model that is not in the cache."""
    settings = services.settings.model_copy(update={"offline": True})
    with pytest.raises(StudioError) as info:
        _hub_snapshot("acme/missing-model-7b", settings)
    return str(info.value)


def queue_transfer(services, adapter_id, tmp_path) -> int:
    """Queue one transfer job (never run) and return its id."""
    target = tmp_path / "new-base"
    target.mkdir(exist_ok=True)
    tab_transfer.submit_transfer(services, adapter_id, str(target), None, {})
    return services.jobs.list(kind="transfer")[0].id


def test_no_jobs_yet_says_so(services):
    assert tab_transfer.results_rows(services) == []
    assert tab_transfer.results_note(services) == tab_transfer.NO_JOBS_YET
    assert "No transfer jobs yet" in tab_transfer.NO_JOBS_YET


def test_offline_refusal_is_worded_for_a_non_coder(offline_error):
    assert "STUDIO_OFFLINE" in offline_error  # what the job log keeps
    reason = tab_transfer.failure_reason(offline_error)
    assert "acme/missing-model-7b" in reason  # which model is missing
    assert "STUDIO_OFFLINE" not in reason and "cache" not in reason
    assert "Target base" in reason and "administrator" in reason  # what to do
    assert tab_transfer.failure_reason("the kit is missing") == "the kit is missing"  # other reasons kept
    assert tab_transfer.failure_reason(None) == ""


def test_a_failure_has_its_own_column_and_a_line_under_the_table(services, kit_adapter, tmp_path, offline_error):
    job_id = queue_transfer(services, kit_adapter, tmp_path)
    assert tab_transfer.results_note(services) == ""  # a queued job: nothing to explain
    services.registry.finish_job(job_id, "failed", error=offline_error)

    (row,) = tab_transfer.results_rows(services)
    assert len(row) == len(tab_transfer.RESULT_HEADERS)
    columns = dict(zip(tab_transfer.RESULT_HEADERS, row, strict=True))
    assert columns["new adapter"] == ""  # no longer holds the error
    assert columns["why it failed"] == tab_transfer.failure_reason(offline_error)

    note = tab_transfer.results_note(services)
    assert f"Transfer job #{job_id} failed" in note
    assert tab_transfer.failure_reason(offline_error) in note
    assert f"log of job #{job_id}" in note  # where the technical detail is


def test_a_succeeded_transfer_names_its_adapter_and_no_reason(services, kit_adapter, tmp_path):
    job_id = queue_transfer(services, kit_adapter, tmp_path)
    services.registry.finish_job(
        job_id, "succeeded", result={"adapter_id": 42, "generated": 16, "kept": 8, "trained": 8}
    )
    (row,) = tab_transfer.results_rows(services)
    assert row[-2:] == ["#42", ""]
    assert tab_transfer.results_note(services) == ""
