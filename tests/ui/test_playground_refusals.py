"""The Playground's and Arena's refusals read as words under the chats, never as Error badges over them.

Sending an empty message used to raise ``gr.Error``: Gradio then put its red "Error" badge
over every pane and over the message box (hiding it) besides the toast. The handlers are run
here as Gradio runs them (``demo.fns``), with no browser and no model loaded.
"""

from __future__ import annotations

import gradio as gr
import pytest

from app import tab_playground


@pytest.fixture
def demo(services):
    with gr.Blocks() as blocks, gr.Tab(tab_playground.TITLE) as tab:
        tab_playground.build(services, tab, blocks)
    yield blocks
    services.playground.schedulers.close()


def run(demo, name: str, output_elem_id: str, **by_elem_id) -> list[dict]:
    """Every update the streaming handler ``name`` (the one writing ``output_elem_id``) yields, keyed by elem_id."""
    block_fn = next(
        f
        for f in demo.fns.values()
        if f.name == name and any(getattr(o, "elem_id", None) == output_elem_id for o in f.outputs)
    )
    values = [by_elem_id.get(c.elem_id, c.value) for c in block_fn.inputs]
    updates = []
    for result in block_fn.fn(*values):  # a gr.Error raised here is what drew the badges
        updates.append({getattr(c, "elem_id", None): v for c, v in result.items()})
    return updates


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"play-prompt": "   "}, "⚠ Type a message first."),
        ({"play-prompt": "hello", "play-base": ""}, "⚠ Choose a base model first."),
    ],
)
def test_a_refused_send_says_why_under_the_panes_and_leaves_them_alone(demo, inputs, message):
    assert run(demo, "send_to_panes", "play-status", **inputs) == [{"play-status": message}]


def test_a_refused_battle_says_why_under_the_arena_chats(demo):
    assert run(demo, "run_battle", "arena-reveal", **{"arena-prompt": ""}) == [
        {"arena-reveal": "⚠ Type a prompt first."}
    ]
