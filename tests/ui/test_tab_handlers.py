"""Tab handlers called directly with real services on a SQLite registry (no broker, no browser)."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from app import tab_datasets, tab_jobs, tab_system, tab_train
from studio.device import detect_device
from studio.errors import NotFoundError, ValidationFailed
from studio.jobs.runner import WorkerIdentity, execute_job
from studio.schema import CheckRequest


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def value(update):
    """The value of a gr.update dict, or the plain value a handler returned."""
    return update.get("value") if isinstance(update, dict) and "__type__" in update else update


@pytest.fixture
def alpaca_file(tmp_path):
    rows = [{"instruction": f"say {i}", "output": f"{i}"} for i in range(6)]
    return write_jsonl(tmp_path / "alpaca.jsonl", [*rows, {"instruction": "", "output": "x"}, "not json"])


# Datasets -----------------------------------------------------------------------------


def test_inspect_reports_format_rows_and_problems(services, alpaca_file):
    out = tab_datasets.inspect_file(services, alpaca_file)
    assert "Detected **alpaca**" in out["detected"] and "8 rows" in out["detected"]
    assert out["needs_mapping"] is False
    problems = value(out["problems"])
    assert [p[:3] for p in problems] == [[7, "instruction", "empty"], [8, "(row)", "unparseable"]]
    assert out["import_btn"]["interactive"] is False
    assert out["drop_btn"]["visible"] is True and out["drop_btn"]["value"] == "Drop these 2 rows and import"
    assert services.datasets.list() == []  # inspecting stores nothing


def test_import_refuses_bad_rows_until_asked_to_drop_them(services, alpaca_file):
    with pytest.raises(ValidationFailed, match="2 of 8 rows are invalid"):
        tab_datasets.import_file(services, alpaca_file, "", False, None)
    out = tab_datasets.import_file(services, alpaca_file, "My set", False, None, drop_invalid=True)
    [row] = services.datasets.list()
    assert (row.name, row.rows, row.report["dropped_rows"]) == ("My set", 6, [7, 8])
    assert out["datasets"][0][:4] == [row.id, "My set", "alpaca", 6]
    assert value(out["selected"]) == row.id
    preview = value(out["preview"])
    assert preview["headers"] == ["messages"] and preview["data"][0] == ["user: say 0 | assistant: 0"]


def test_ambiguous_columns_get_a_prefilled_mapping_step(services, tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nwhat is 1+1,2\nwhat is 2+2,4\n")
    out = tab_datasets.inspect_file(services, str(path))
    assert out["needs_mapping"] is True and out["mapping_box"]["visible"] is True
    assert value(out["map_format"]) == "prompt_completion"
    assert value(out["map_prompt"]) == "question" and value(out["map_completion"]) == "answer"
    assert out["map_prompt"]["visible"] and not out["map_text"]["visible"]
    assert out["import_btn"]["interactive"] is False  # not before the mapping is confirmed
    maps = {f"map_{f}": tab_datasets.NONE for f in tab_datasets.MAP_FIELDS}
    maps |= {"map_prompt": "question", "map_completion": "answer"}
    checked = tab_datasets.check_mapping(services, str(path), "prompt_completion", **maps)
    assert checked["import_btn"]["interactive"] is True and "All **2** rows are valid" in checked["report"]
    tab_datasets.import_file(services, str(path), "qa", True, "prompt_completion", **maps)
    [row] = services.datasets.list()
    assert row.mapping == {"prompt": "question", "completion": "answer"}


def test_delete_dataset_and_unconfirmed_delete_does_nothing(services, alpaca_file):
    tab_datasets.import_file(services, alpaca_file, "", False, None, drop_invalid=True)
    [row] = services.datasets.list()
    assert tab_datasets.delete_dataset(services, None) == {}  # the browser's confirm() was declined
    out = tab_datasets.delete_dataset(services, row.id)
    assert out["datasets"] == [] and services.datasets.list() == []


# Train --------------------------------------------------------------------------------


def form(dataset_id, **changes):
    base = dict(
        dataset_id=dataset_id,
        base_model="smollm2-135m-instruct",
        base_custom="",
        variant="lora",
        variant_params={"r": 4, "lora_alpha": 8.0},
        hyper={"max_steps": 5, "batch_size": 2},
        name="quick one",
        seed=7,
        task=tab_train.AUTO_TASK,
    )
    return base | changes


def test_submit_training_queues_a_validated_request(services, alpaca_file):
    tab_datasets.import_file(services, alpaca_file, "", False, None, drop_invalid=True)
    [ds] = services.datasets.list()
    result = tab_train.submit_training(services, **form(ds.id, base_custom="/models/tiny"))
    job = services.jobs.get(result["job_id"])
    assert services.jobs.dispatcher.sent == [job.id]
    assert job.kind == "train" and job.base_model == "/models/tiny" and job.variant == "lora"
    assert job.request["hyper"]["max_steps"] == 5 and job.request["variant_params"]["r"] == 4
    assert "task" not in job.request or job.request["task"] == "causal-lm"
    assert "No worker is online" in result["message"]


def test_submit_training_maps_every_problem_to_its_field(services):
    bad = form(None, variant_params={"r": 0}, hyper={"batch_size": 0, "learning_rate": 2.0}, base_model="")
    with pytest.raises(tab_train.FormErrors) as caught:
        tab_train.submit_training(services, **bad)
    errors = caught.value.errors
    assert set(errors) == {"dataset_id", "base_model", "variant.r", "hyper.batch_size", "hyper.learning_rate"}
    assert services.jobs.dispatcher.sent == []


def test_submit_training_for_a_missing_dataset_is_a_clear_error(services):
    with pytest.raises(NotFoundError, match="dataset 99 does not exist"):
        tab_train.submit_training(services, **form(99))


def test_estimate_is_measured_on_this_machine_with_its_validation_passes(services, alpaca_file, tiny_llama):
    tab_datasets.import_file(services, alpaca_file, "", False, None, drop_invalid=True)
    [ds] = services.datasets.list()
    hyper = {"max_steps": 30, "batch_size": 4, "eval_every": 10, "validation_fraction": 0.5, "max_length": 64}
    text = tab_train.estimate_markdown(services, ds.id, str(tiny_llama), hyper)
    assert "**30 steps**" in text and "about " in text and "on cpu" in text.lower()
    assert "measured on this machine:" in text and "s per step, 3 validation passes of 3 rows" in text
    epochs = {"max_steps": None, "epochs": 2.0, "batch_size": 2, "validation_fraction": 0.0, "max_length": 64}
    assert "**6 steps**" in tab_train.estimate_markdown(services, ds.id, str(tiny_llama), epochs)
    # a base model this machine cannot load: the rough guess, labelled as one, with the reason
    rough = tab_train.estimate_markdown(services, ds.id, "/no/such/model", epochs)
    assert "**6 steps**" in rough and "Rough estimate (could not measure on this machine" in rough


def test_variant_markdown_links_the_paper():
    text = tab_train.variant_markdown("dora")
    assert "When to pick it" in text and "arxiv.org/abs/" in text


# Jobs ---------------------------------------------------------------------------------


def test_jobs_tab_shows_progress_chart_logs_and_retries(services, settings, registry):
    job = services.jobs.submit(CheckRequest(steps=6))
    queued = tab_jobs.job_detail(services, job.id)
    assert queued["cancel_btn"]["interactive"] is True and queued["retry_btn"]["interactive"] is False
    assert "queued" in tab_jobs.queue_html(services)
    execute_job(job.id, registry, settings, WorkerIdentity("w1", detect_device("cpu")))
    out = tab_jobs.refresh(services, None, None)
    assert value(out["selected"]) == job.id  # the newest job is selected by default
    assert "succeeded" in out["detail"] and "finished" in out["logs"]
    [curve] = value(out["chart"]).data
    assert list(curve.x) == [1, 2, 3, 4, 5, 6]
    assert "width:100%" in out["queue"]
    again = tab_jobs.refresh(services, job.id, out["signature"])
    assert "chart" not in again  # nothing new: the figure is not re-sent
    retried = tab_jobs.retry_job(services, job.id, "page-token")
    assert value(retried["selected"]) == job.id + 1 and services.jobs.dispatcher.sent == [job.id, job.id + 1]
    # The second click of a double click finds the first retry; the renewed token retries again.
    again = tab_jobs.retry_job(services, job.id, "page-token")
    assert value(again["selected"]) == job.id + 1 and services.jobs.dispatcher.sent == [job.id, job.id + 1]
    renewed = tab_jobs.retry_job(services, job.id, retried["retry_token"])
    assert value(renewed["selected"]) == job.id + 2 and retried["retry_token"] != "page-token"


def test_cancel_a_queued_job(services):
    job = services.jobs.submit(CheckRequest(steps=3))
    out = tab_jobs.cancel_job(services, job.id)
    assert "cancel" in out["detail"]
    assert services.jobs.get(job.id).status == "cancelled"


def test_workers_line_says_what_to_do_when_none_is_online(services):
    assert "studio worker" in tab_jobs.workers_markdown(services)


# System -------------------------------------------------------------------------------


def test_system_check_button_queues_a_check(services):
    out = tab_system.run_check(services)
    assert "Queued system check as job #1" in out["notice"] and out["jobs"][0][:3] == [1, "check", "queued"]


def test_a_check_queued_while_the_broker_is_down_says_it_waits(services):
    class DownBroker:
        def send(self, job_id):
            raise ConnectionError("Error 111 connecting to redis:6379. Connection refused.")

    services.jobs.dispatcher = DownBroker()
    out = tab_system.run_check(services)
    assert "It is queued — waiting for the job queue (broker unreachable: Error 111" in out["notice"]
    assert out["jobs"][0][:3] == [1, "check", "queued"]
    assert "waiting for the job queue" in tab_jobs.job_detail(services, 1)["detail"]


def test_friendly_turns_studio_errors_into_gradio_errors(services):
    from app.ui import friendly

    with pytest.raises(gr.Error, match="job 42 does not exist"):
        friendly(tab_jobs.cancel_job)(services, 42)


def test_pruned_model_download_is_offered_for_loraprune_adapters_only():
    from types import SimpleNamespace

    from app import tab_adapters
    from studio.errors import NotFoundError

    def files_gone(adapter_id):
        raise NotFoundError(f"the files of adapter {adapter_id} are missing from /x")

    def services_with(variant):
        row = SimpleNamespace(
            id=1, name="a", variant=variant, base_model="b", dataset_id=None, trainable_params=1, size_bytes=1,
            ranks={}, metrics={}, source_job_id=None, parents=None,
        )  # fmt: skip
        adapters = SimpleNamespace(
            get=lambda _id: row, rank_history=lambda _id: [], zip=files_gone, eval_results=lambda _id: []
        )
        return SimpleNamespace(adapters=adapters)

    assert tab_adapters.details(services_with("loraprune"), 1)["pruned_btn"]["visible"] is True
    assert tab_adapters.details(services_with("lora"), 1)["pruned_btn"]["visible"] is False
    assert tab_adapters.details(services_with("loraprune"), None)["pruned_btn"]["visible"] is False
    # An adapter whose files are gone gets a disabled download button and the reason beside it.
    gone = tab_adapters.details(services_with("lora"), 1)
    assert gone["zip_btn"]["interactive"] is False and gone["zip_btn"]["value"] is None
    assert "No download: the files of adapter 1 are missing" in gone["zip_sha"]
