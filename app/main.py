"""Assemble the studio's Blocks from its tabs: one module per tab, each with ``TITLE``, ``ELEM_ID`` and ``build``."""

from __future__ import annotations

from types import ModuleType

import gradio as gr

from app import (
    tab_adapters,
    tab_compose,
    tab_datasets,
    tab_evaluate,
    tab_federated,
    tab_jobs,
    tab_merge,
    tab_playground,
    tab_sweep,
    tab_system,
    tab_train,
    tab_transfer,
)
from app.auth import parse_auth
from app.theme import header_html
from studio.services.container import Services


def tab_modules() -> list[ModuleType]:
    """The tabs in display order; Merge, Compose and Evaluate only where their job kinds are installed."""
    tabs = [tab_datasets, tab_train, tab_jobs, tab_adapters]
    if tab_merge.available():
        tabs.append(tab_merge)
    if tab_compose.available():  # MeteoRA mixtures and RecLoRA personalised adapters
        tabs.append(tab_compose)
    tabs.append(tab_playground)
    if tab_evaluate.available():
        tabs.append(tab_evaluate)
    if tab_transfer.available():  # Transfer & Generate: each section shows when it is installed
        tabs.append(tab_transfer)
    if tab_federated.available():
        tabs.append(tab_federated)
    if tab_sweep.available():
        tabs.append(tab_sweep)
    return [*tabs, tab_system]


def build_app(services: Services) -> gr.Blocks:
    """The whole UI for ``services``; nothing heavy happens until a user acts."""
    with gr.Blocks(title="Adapter Studio", fill_width=True) as demo:
        logout = parse_auth(services.settings.auth) is not None
        gr.HTML(header_html(logout=logout), elem_id="studio-header")
        with gr.Tabs(elem_id="studio-tabs"):
            for module in tab_modules():
                with gr.Tab(module.TITLE, id=module.ELEM_ID, elem_id=module.ELEM_ID) as tab:
                    module.build(services, tab, demo)
    return demo
