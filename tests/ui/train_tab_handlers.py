"""The Train tab built in a test, and its Gradio handlers called without a browser (shared by UI tests)."""

from __future__ import annotations

import gradio as gr

from app import tab_train


def build_train_tab(services):
    """The Train tab (with its pre-train section) in a fresh Blocks, as the app builds it."""
    with gr.Blocks() as blocks, gr.Tab(tab_train.TITLE) as tab:
        tab_train.build(services, tab, blocks)
    return blocks


def handler(demo, name: str, output_elem_id: str):
    """The function Gradio runs for handler ``name`` that writes the component ``output_elem_id``."""
    for block_fn in demo.fns.values():
        if block_fn.name == name and any(getattr(o, "elem_id", None) == output_elem_id for o in block_fn.outputs):
            return block_fn
    raise AssertionError(f"no handler {name} writes #{output_elem_id}")


def call(block_fn, **by_elem_id):
    """Run ``block_fn`` with each input's initial value (``by_elem_id`` overriding); outputs keyed by elem_id."""
    values = []
    for component in block_fn.inputs:
        if isinstance(component, gr.State):
            values.append(component.value() if callable(component.value) else component.value)
        else:
            values.append(by_elem_id.get(component.elem_id, component.value))
    result = block_fn.fn(*values)
    return {getattr(c, "elem_id", None) or c: v for c, v in result.items()}
