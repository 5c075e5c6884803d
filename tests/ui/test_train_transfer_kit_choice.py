"""Train tab: the transfer kit is a choice in the form (on by default), not always made after training.

The Transfer tab tells users to train with "Keep a transfer kit" on, and the kit costs minutes on a
CPU after a Quick run's seconds of training: the form must offer it and the queued job must follow it.
"""

from __future__ import annotations

import json

import gradio as gr

from app import tab_datasets, tab_train


def train_form(dataset_id: int, **changes):
    """The Train tab's values as build_request / submit_training take them."""
    form = dict(
        dataset_id=dataset_id,
        base_model="smollm2-135m-instruct",
        base_custom="",
        variant="lora",
        variant_params={"r": 4, "lora_alpha": 8.0},
        hyper={"max_steps": 5, "batch_size": 2},
        name="",
        seed=7,
        task=tab_train.AUTO_TASK,
    )
    return form | changes


def test_the_queued_job_follows_the_transfer_kit_checkbox(services, tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(6)))
    tab_datasets.import_file(services, str(path), "chat", False, None)
    [ds] = services.datasets.list()
    without = tab_train.submit_training(services, **train_form(ds.id, transfer_kit=False))
    assert services.jobs.get(without["job_id"]).request["transfer_kit"] is False
    default = tab_train.submit_training(services, **train_form(ds.id))
    assert services.jobs.get(default["job_id"]).request["transfer_kit"] is True


def test_the_train_tab_offers_the_checkbox_the_transfer_tab_names(services):
    with gr.Blocks() as demo, gr.Tab("Train") as tab:
        tab_train.build(services, tab, demo)
    [box] = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "train-transfer-kit"]
    assert isinstance(box, gr.Checkbox) and box.value is True and box.label == "Keep a transfer kit"
