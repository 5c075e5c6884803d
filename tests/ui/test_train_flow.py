"""Dataset -> training (run inline, no broker) -> Jobs, Adapters and Playground tab handlers on the result."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from app import tab_adapters, tab_datasets, tab_evaluate, tab_jobs, tab_playground, tab_train
from studio.device import detect_device
from studio.jobs.runner import WorkerIdentity, execute_job
from studio.services.playground import PlaygroundService
from ui.shared_services import module_services

COLORS = {"sky": "blue", "grass": "green", "sun": "yellow", "snow": "white"}


def value(update):
    return update.get("value") if isinstance(update, dict) and "__type__" in update else update


@pytest.fixture(scope="module")
def world(tiny_llama, tmp_path_factory):
    """Services and the two trained adapters, shared by the module's tests (the training is the expensive
    part). Only the first test changes them, deleting the AdaLoRA adapter at its end; the others use the
    LoRA one."""
    root = tmp_path_factory.mktemp("train-flow")
    with module_services(root) as services:
        yield services, _train_two(services, services.settings, services.registry, tiny_llama, root)


@pytest.fixture
def services(world):
    return world[0]


@pytest.fixture
def trained(world):
    return world[1]


def _train_two(services, settings, registry, tiny_llama, tmp_path):
    """Two adapters of the tiny Llama, trained inline: plain LoRA and AdaLoRA (whose ranks move)."""
    path = tmp_path / "colors.jsonl"
    rows = [{"instruction": f"what color is the {k}?", "output": v} for k, v in COLORS.items()] * 4
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tab_datasets.import_file(services, str(path), "colors", False, None)
    [dataset] = services.datasets.list()
    worker = WorkerIdentity("inline", detect_device("cpu"))
    adapters = {}
    for variant, params in (
        ("lora", {"r": 4}),
        ("adalora", {"init_r": 6, "target_r": 3, "tinit_ratio": 0.0, "tfinal_ratio": 0.25}),
    ):
        result = tab_train.submit_training(
            services,
            dataset_id=dataset.id,
            base_model=None,
            base_custom=str(tiny_llama),
            variant=variant,
            variant_params=params,
            hyper={"max_steps": 8, "batch_size": 2, "log_every": 1, "eval_every": 4, "max_length": 64},
            name=f"{variant} colors",
            seed=0,
            task=tab_train.AUTO_TASK,
        )
        assert execute_job(result["job_id"], registry, settings, worker) == "succeeded", services.jobs.get(
            result["job_id"]
        ).error
        adapters[variant] = services.jobs.get(result["job_id"]).result["adapter_id"]
    return adapters


def test_trained_adapters_through_the_tabs(services, trained, tiny_llama):
    # Jobs: the finished job shows its loss and validation curves.
    detail = tab_jobs.job_detail(services, 1)
    # The job is named after its variant, dataset and adapter.
    assert "**#1 lora on 'colors' (#1) → 'lora colors'**" in detail["detail"]
    assert "succeeded" in detail["detail"] and f"Adapter #{trained['lora']} 'lora colors'" in detail["detail"]
    assert {t.name for t in detail["chart"]["value"].data} == {"training loss", "validation loss"}

    # Adapters: filters, table, rank charts, overlay, zip, delete.
    choices = tab_adapters.filter_choices(services)
    assert choices["variant"]["choices"] == ["All", "adalora", "lora"]
    assert "eval_loss" in choices["metric"]["choices"]
    everything = tab_adapters.table(services, "All", "All", "All", "All")
    assert {row[2] for row in value(everything["table"])} == {"lora", "adalora"}
    only_lora = tab_adapters.table(services, "lora", "All", "All", "All")
    assert [row[0] for row in value(only_lora["table"])] == [trained["lora"]]
    assert everything["scatter"].data  # params vs eval_loss, one colour per variant

    ada = tab_adapters.details(services, trained["adalora"])
    assert "adalora" in ada["details"] and ada["heatmap"].frames  # ranks moved: a step slider
    assert sum(len(t.y) for t in ada["bars"].data) == len(services.adapters.get(trained["adalora"]).ranks)
    lora = tab_adapters.details(services, trained["lora"])
    assert not lora["heatmap"].data  # fixed ranks: an explained empty chart

    overlay = tab_adapters.compare(services, [trained["lora"], trained["adalora"]])
    assert len(overlay["conv_step"].data) == 2 and len(overlay["conv_time"].data) == 2

    # Selecting an adapter puts its zip on the download button, its SHA-256 beside it.
    shown = tab_adapters.details(services, trained["lora"])
    zipped = value(shown["zip_btn"])
    assert shown["zip_btn"]["interactive"] is True
    assert hashlib.sha256(Path(zipped).read_bytes()).hexdigest() in shown["zip_sha"]
    with zipfile.ZipFile(zipped) as archive:
        assert any(name.endswith("adapter_config.json") for name in archive.namelist())

    # Playground: base and the LoRA side by side, streamed.
    # Playground: the new adapters are offered for their base, the newest in pane 2.
    panes = tab_playground.refresh(PlaygroundService(services.registry, services.settings), str(tiny_llama))
    assert value(panes["target_0"]) == "base" and value(panes["target_1"]) == f"adapter:{trained['adalora']}"

    deleted = tab_adapters.delete(
        services, trained["adalora"], variant="All", base_model="All", dataset="All", metric="All"
    )
    assert [row[0] for row in value(deleted["table"])] == [trained["lora"]]


def test_playground_send_streams_into_each_pane(services, trained, tiny_llama):
    playground = PlaygroundService(services.registry, services.settings)
    raw = {"target_0": "base", "target_1": f"adapter:{trained['lora']}", "chat_0": [], "chat_1": []}
    updates = list(tab_playground.send(playground, None, str(tiny_llama), 2, "what color is the sky?", **raw))
    assert updates[0]["prompt"] == "" and updates[0]["chat_1"][-1]["content"] == "…"
    final = {}
    for update in updates:
        final.update(update)
    for pane in ("chat_0", "chat_1"):
        assert [m["role"] for m in final[pane]] == ["user", "assistant"] and final[pane][1]["content"]
    streamed = [u for u in updates if "chat_0" in u and "prompt" not in u]
    assert len(streamed) > 2  # token by token, not one final message


def test_evaluate_tab_queues_an_eval_job(services, trained):
    if not tab_evaluate.available():
        pytest.skip("the eval job kind is not installed")
    line = tab_evaluate.submit_eval(services, [trained["lora"]], None, 1, {"metrics": ["loss"], "max_examples": 4})
    job = services.jobs.list(kind="eval")[0]
    assert f"#{job.id}" in line and job.request["adapter_ids"] == [trained["lora"]]
