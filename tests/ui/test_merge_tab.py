"""Merge tab: queue a merge from the form, see it run and the new adapter listed."""

from __future__ import annotations

import gradio as gr
import pytest

from app import tab_merge
from studio.errors import ValidationFailed


@pytest.fixture
def two_adapters(services, tiny_llama, tiny_loras):
    rows = [
        services.registry.add_adapter(
            name=f"lora{i}", variant="lora", base_model=str(tiny_llama), path=str(path), sha256="0" * 64
        )
        for i, path in enumerate(tiny_loras)
    ]
    return [row.id for row in rows]


def test_weights_text_is_parsed_or_refused_naming_the_entry():
    assert tab_merge.parse_weights(" 0.7, 0.3 ") == [0.7, 0.3]
    assert tab_merge.parse_weights("1; -0.5") == [1.0, -0.5]
    assert tab_merge.parse_weights("") is None
    with pytest.raises(ValidationFailed, match="Weights: 'a lot' is not a number"):
        tab_merge.parse_weights("1, a lot")


def test_merge_from_the_tab_runs_and_lists_the_new_adapter(services, two_adapters):
    from studio.device import detect_device
    from studio.jobs.runner import WorkerIdentity, execute_job

    assert sorted(choice[1] for choice in tab_merge.adapter_choices(services)) == two_adapters
    line = tab_merge.submit_merge(
        services, two_adapters, "0.7, 0.3", {"method": "linear", "density": 0.2, "rank": None, "name": "blend"}
    )
    job = services.jobs.list(kind="merge")[0]
    assert line.startswith(f"Queued merge job #{job.id} (linear: #{two_adapters[0]} × 0.7")
    assert job.request["weights"] == [0.7, 0.3] and services.jobs.dispatcher.sent == [job.id]
    assert tab_merge.results_rows(services)[0][:4] == [
        job.id,
        "queued",
        f"#{two_adapters[0]}, #{two_adapters[1]}",
        "linear",
    ]

    worker = WorkerIdentity("w", detect_device("cpu"))
    assert execute_job(job.id, services.registry, services.settings, worker) == "succeeded"
    row = tab_merge.results_rows(services)[0]
    made = services.jobs.get(job.id).result["adapter_id"]
    assert row[1] == "succeeded" and row[4] == f"#{made}" and float(row[5]) < 1e-5
    assert services.adapters.get(made).name == "blend" and services.adapters.get(made).parents == two_adapters


def test_bad_requests_are_refused_before_anything_is_queued(services, two_adapters):
    options = {"method": "linear", "density": 0.2, "rank": None, "name": None}
    with pytest.raises(ValidationFailed, match="Adapters: choose the adapters"):
        tab_merge.submit_merge(services, [], "", options)
    with pytest.raises(ValidationFailed, match=r"one weight per adapter \(3 given for 2 adapters\)"):
        tab_merge.submit_merge(services, two_adapters, "1, 2, 3", options)
    assert services.jobs.list(kind="merge") == []


def test_one_adapter_alone_is_refused_as_a_copy_unless_it_is_resized(services, two_adapters):
    from app.ui import friendly

    lone = two_adapters[:1]
    options = {"method": "linear", "density": 0.2, "rank": None, "name": None}
    line = friendly(tab_merge.submit_merge, "status")(services=services, adapters=lone, weights="", options=options)
    assert line["status"] == (
        f"⚠ choose two or more adapters to merge; adapter #{lone[0]} alone (linear, weight 1, its own rank 4) "
        "would be copied unchanged. To make it smaller, set Rank below 4; to scale or reverse it, give it a "
        "weight other than 1"
    )
    assert services.jobs.list(kind="merge") == []  # refused before anything was queued
    resized = tab_merge.submit_merge(services, lone, "", {**options, "rank": 2})
    assert resized.startswith("Queued merge job") and f"#{lone[0]} × 1" in resized


def test_adapters_tab_says_what_a_merged_adapter_was_made_from(services, two_adapters):
    from app import tab_adapters

    job = services.jobs.submit({"kind": "merge", "adapter_ids": two_adapters})
    row = services.registry.add_adapter(
        name="m",
        variant="merge",
        base_model="b",
        path="/nowhere",
        sha256="0",
        source_job_id=job.id,
        parents=two_adapters,
    )
    text = tab_adapters.details(services, row.id)["details"]
    assert f"Merged by job #{job.id} from adapters #{two_adapters[0]}, #{two_adapters[1]}" in text
    assert "Merged" not in tab_adapters.details(services, two_adapters[0])["details"]


def test_adapters_tab_offers_the_merged_model_as_a_download(services, two_adapters):
    import hashlib
    import zipfile
    from pathlib import Path

    from app import tab_adapters

    made = tab_adapters.make_merged_zip(services, two_adapters[0])
    path = made["merged_btn"]["value"]  # on the download button, which the browser then fetches
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() in made["model_sha"]
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert f"merged-model-{two_adapters[0]}/model.safetensors" in names
        assert f"merged-model-{two_adapters[0]}/SHA256SUMS" in names
    with pytest.raises(gr.Error, match="Select an adapter"):
        tab_adapters.make_merged_zip(services, None)
