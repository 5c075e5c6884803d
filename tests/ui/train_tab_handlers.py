"""The Train tab built in a test, and its Gradio handlers called without a browser (shared by UI tests)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from app import tab_train

LNCRNA = Path(__file__).resolve().parents[2] / "data" / "samples" / "lncrna_athaliana" / "train.jsonl"


def add_lncrna_sample(services, tmp_path, rows: int = 12):
    """A registered dataset of the first ``rows`` labelled lncRNA/mRNA sequences (the import detects the DNA column)."""
    path = tmp_path / "lnc.jsonl"
    path.write_text("".join(line + "\n" for line in LNCRNA.read_text().splitlines()[:rows]))
    return services.datasets.add(path, mapping={"text": "sequence", "label": "label"})


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
