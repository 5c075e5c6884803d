"""Train tab: the transfer kit is a choice in the form (on by default), not always made after training.

The Transfer tab tells users to train with "Keep a transfer kit" on, and the kit costs minutes on a
CPU after a Quick run's seconds of training: the form must offer it and the queued job must follow it.
"""

from __future__ import annotations

import json

import gradio as gr

from app import tab_datasets, tab_train
from ui.test_tab_handlers import form as train_form  # the Train tab's values, as the handlers take them


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
