"""The Transfer form's Rank and Seed fields say, from the schema, what they do in plain words."""

from __future__ import annotations

import gradio as gr

from app import tab_transfer
from studio.schema import TransferOptions


def transfer_widgets(services) -> dict[str, gr.components.Component]:
    """The Transfer tab's components by elem_id, as the tab builds them."""
    with gr.Blocks() as demo, gr.Tab(tab_transfer.TITLE) as tab:
        tab_transfer.build(services, tab, demo)
    return {block.elem_id: block for block in demo.blocks.values() if block.elem_id}


def test_rank_and_seed_carry_their_schema_help(services):
    widgets = transfer_widgets(services)
    rank, seed = widgets["transfer-r"], widgets["transfer-seed"]
    assert rank.label == "Rank (r)"
    for name, widget in (("r", rank), ("seed", seed)):
        description = TransferOptions.model_fields[name].description
        assert description and widget.info.startswith(description)  # the form's help is the schema's words
    assert "new adapter" in rank.info and "Empty = the same rank" in rank.info
    assert "same seed and settings give the same adapter" in seed.info
