"""Assemble the studio's Blocks from its tabs."""

from __future__ import annotations

import gradio as gr

from app import tab_system
from studio.services.container import Services

TABS = [tab_system]


def build_app(services: Services) -> gr.Blocks:
    """The whole UI for ``services``; nothing heavy happens until a user acts."""
    with gr.Blocks(title="Adapter Studio") as demo:
        gr.Markdown("# Adapter Studio\nFine-tune language models with LoRA and its research variants.")
        with gr.Tabs():
            for tab in TABS:
                with gr.Tab(tab.TITLE):
                    tab.build(services)
    return demo
