"""Evaluate tab: the "Result of" picker shows the newest finished evaluation by itself, never
overriding a job picked by hand, and the results list names each dataset (``#1 colors``)."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from app import tab_evaluate

RESULT = {"models": [{"key": "base:tiny-base", "metrics": {"eval_loss": 1.5}}], "comparison": []}


@pytest.fixture
def dataset(services, tmp_path):
    path = tmp_path / "colors.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"say {i}", "output": str(i)}) + "\n" for i in range(4)))
    return services.datasets.add(path, name="colors")


def queue_eval(services, dataset_id: int) -> int:
    return services.jobs.submit({"kind": "eval", "dataset_id": dataset_id, "base_model": "tiny-base"}).id


def finish(services, job_id: int) -> None:
    services.registry.finish_job(job_id, "succeeded", result=RESULT)


def picker_value(update: dict) -> int | None:
    """The value a picker update sets; KeyError when it leaves the value as it is."""
    return update["value"]


def test_results_and_choices_name_the_dataset(services, dataset):
    job_id = queue_eval(services, dataset.id)
    [row] = tab_evaluate.results_rows(services)
    assert row[:4] == [job_id, "queued", "tiny-base", f"#{dataset.id} colors"]
    finish(services, job_id)
    assert tab_evaluate.job_choices(services) == [(f"job #{job_id} on dataset #{dataset.id} colors", job_id)]
    services.datasets.delete(dataset.id)
    assert tab_evaluate.results_rows(services)[0][3] == f"#{dataset.id} (deleted)"


def test_the_newest_finished_evaluation_is_picked_while_nothing_was_picked_by_hand(services, dataset):
    first = queue_eval(services, dataset.id)
    waiting = tab_evaluate.job_picker(services, None, True)
    assert "value" not in waiting["job"] and waiting["job"]["choices"] == []  # nothing finished: nothing to show
    finish(services, first)
    shown = tab_evaluate.job_picker(services, None, True)
    assert picker_value(shown["job"]) == first and shown["following"] is True
    # the refresh after that sends no value again (the comparison is drawn once, not every 5 seconds)
    assert "value" not in tab_evaluate.job_picker(services, first, True)["job"]

    second = queue_eval(services, dataset.id)  # submitted while the first one is shown
    assert "value" not in tab_evaluate.job_picker(services, first, True)["job"]
    finish(services, second)
    assert picker_value(tab_evaluate.job_picker(services, first, True)["job"]) == second


def test_a_job_picked_by_hand_is_never_replaced(services, dataset):
    first = queue_eval(services, dataset.id)
    finish(services, first)
    second = queue_eval(services, dataset.id)
    finish(services, second)
    kept = tab_evaluate.job_picker(services, first, False)  # the user chose the older one
    assert "value" not in kept["job"] and kept["following"] is False
    assert [job_id for _, job_id in kept["job"]["choices"]] == [second, first]
    # a job picked by hand that has since been deleted pins nothing: the newest is shown again
    services.registry.delete_job(first)
    gone = tab_evaluate.job_picker(services, first, False)
    assert picker_value(gone["job"]) == second and gone["following"] is True


def test_the_tab_wires_the_refresh_and_the_hand_pick(services, dataset):
    with gr.Blocks() as demo, gr.Tab("Evaluate") as tab:
        tab_evaluate.build(services, tab, demo)
    fns = {fn.name: fn for fn in demo.fns.values()}
    picker = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "eval-job")
    job_id = queue_eval(services, dataset.id)
    finish(services, job_id)

    refresh = fns["refresh_results"]
    assert picker in refresh.inputs and picker in refresh.outputs
    out = refresh.fn(None, True)  # keyed by component
    assert picker_value(out[picker]) == job_id  # the 5-second refresh picks it by itself
    # a value set by a refresh draws the comparison (change); only a user's pick (input) stops following
    triggers = {(fn.name, event) for fn in demo.fns.values() for target, event in fn.targets if target == picker._id}
    assert {("draw_result", "change"), ("picked_by_hand", "input")} <= triggers
