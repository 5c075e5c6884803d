"""The Adapters tab's "Download merged model" and "Delete" are usable only with an adapter selected.

Both used to be enabled on a fresh page, beside a greyed-out "Download as zip": a click on the
first answered with an "Error: Select an adapter first." toast, a click on Delete did nothing.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from app import tab_adapters


def fake_services() -> SimpleNamespace:
    """Just what ``details`` reads for one plain LoRA adapter (#1)."""
    row = SimpleNamespace(
        id=1, name="a", variant="lora", base_model="b", dataset_id=None, trainable_params=1, size_bytes=1,
        ranks={}, metrics={}, source_job_id=None, parents=None,
    )  # fmt: skip
    adapters = SimpleNamespace(
        get=lambda _id: row, rank_history=lambda _id: [], eval_results=lambda _id: [], zip=lambda _id: __file__
    )
    return SimpleNamespace(adapters=adapters)


def test_nothing_selected_greys_out_merged_download_and_delete():
    shown = tab_adapters.details(fake_services(), None)
    assert shown["merged_btn"]["interactive"] is False
    assert shown["delete_btn"]["interactive"] is False


def test_a_selected_adapter_enables_them():
    shown = tab_adapters.details(fake_services(), 1)
    assert shown["merged_btn"]["interactive"] is True and shown["merged_btn"]["value"] is None
    assert shown["delete_btn"]["interactive"] is True


def test_the_page_opens_with_them_greyed_out(services):
    with gr.Blocks() as demo, gr.Tab(tab_adapters.TITLE) as tab:
        tab_adapters.build(services, tab, demo)
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert by_id["adapters-merged-btn"].interactive is False
    assert by_id["adapters-delete"].interactive is False
    # details() writes the Delete button, so selecting an adapter (or deleting it) updates it too.
    selecting = next(f for f in demo.fns.values() if f.name == "details")
    assert by_id["adapters-delete"] in selecting.outputs
