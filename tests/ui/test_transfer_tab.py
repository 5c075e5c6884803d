"""Transfer & Generate tab: the source picker says which adapters have a kit; a transfer is queued from the form."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from app import tab_transfer
from studio.errors import ValidationFailed


@pytest.fixture
def adapters(services, tiny_llama, tiny_loras):
    """Two registered adapters; the first gets a (minimal) transfer kit on disk."""
    kit = tiny_loras[0] / "transfer_kit"
    kit.mkdir(exist_ok=True)
    (kit / "kit.json").write_text(json.dumps({"source_base": str(tiny_llama)}))
    rows = [
        services.registry.add_adapter(
            name=f"lora{i}", variant="lora", base_model=str(tiny_llama), path=str(path), sha256="0" * 64
        )
        for i, path in enumerate(tiny_loras)
    ]
    return [row.id for row in rows]


@pytest.fixture
def other_base(tmp_path):
    """A directory standing for a base model other than the adapters' (the job is only queued, never run)."""
    path = tmp_path / "new-base"
    path.mkdir()
    return path


def test_tab_builds_with_the_transfer_form(services):
    with gr.Blocks() as demo, gr.Tab(tab_transfer.TITLE) as tab:
        tab_transfer.build(services, tab, demo)
    ids = {block.elem_id for block in demo.blocks.values()}
    assert {"transfer-adapter", "transfer-target", "transfer-submit", "transfer-results"} <= ids
    assert {"transfer-samples", "transfer-threshold"} <= ids  # fields from the TransferOptions schema


def test_picker_shows_which_adapters_have_a_kit_and_a_transfer_is_queued(services, adapters, other_base):
    labels = dict((value, label) for label, value in tab_transfer.source_choices(services))
    assert labels[adapters[0]].endswith("has kit ✓") and labels[adapters[1]].endswith("no kit")
    assert services.settings.default_base_model in tab_transfer.target_choices(services)

    target = str(other_base)
    line = tab_transfer.submit_transfer(services, adapters[0], target, "moved", {"samples": 8, "r": None})
    job = services.jobs.list(kind="transfer")[0]
    assert line.startswith(f"Queued transfer job #{job.id} (adapter #{adapters[0]} to {target})")
    assert job.request["options"]["samples"] == 8 and job.request["name"] == "moved"
    assert services.jobs.dispatcher.sent == [job.id]
    # live counts come from the progress text until the result has them
    services.registry.update_job_progress(
        job.id,
        step=3,
        total_steps=8,
        progress=0.4,
        eta_seconds=None,
        message="generating: 16 written, 3 of 8 kept, 0 trained",
    )
    assert tab_transfer.results_rows(services)[0][:7] == [
        job.id,
        "queued",
        f"#{adapters[0]}",
        target,
        16,
        3,
        0,
    ]


def test_refusals_are_plain_and_queue_nothing(services, adapters, other_base):
    with pytest.raises(ValidationFailed, match="Adapter: choose"):
        tab_transfer.submit_transfer(services, None, str(other_base), None, {})
    with pytest.raises(ValidationFailed, match="Target base: choose"):
        tab_transfer.submit_transfer(services, adapters[0], " ", None, {})
    with pytest.raises(ValidationFailed, match="retrain it with transfer_kit on"):
        tab_transfer.submit_transfer(services, adapters[1], str(other_base), None, {})
    assert services.jobs.list(kind="transfer") == []


def test_a_transfer_onto_the_adapters_own_base_is_refused(services, adapters, tiny_llama):
    """The Target base picker starts on the default base, usually the adapter's own: one click must not queue
    minutes of work that carries the adapter to where it already is (named by id or by another path to it)."""
    for target in (str(tiny_llama), f" {tiny_llama}/ ", str(tiny_llama / ".." / tiny_llama.name)):
        with pytest.raises(ValidationFailed, match=f"Target base: adapter #{adapters[0]} is already for"):
            tab_transfer.submit_transfer(services, adapters[0], target, None, {})
    assert services.jobs.list(kind="transfer") == []
