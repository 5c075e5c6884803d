"""Compose tab: MeteoRA mixtures of adapters and RecLoRA personalised adapters, each a job made from its schema.

Two sections (:mod:`app.compose_mixture`, :mod:`app.compose_personalise`), each shown where this
installation has its job kind; LoRA-LEGO, the third way to compose adapters, is a merge method
in the Merge tab.
"""

from __future__ import annotations

import gradio as gr

from app.ui import module_installed
from studio.services.container import Services

TITLE = "Compose"
ELEM_ID = "tab-compose"


def mixture_available() -> bool:
    """True when the MeteoRA ``mixture`` job kind exists in this installation."""
    return module_installed("studio.composition.mixture_job")


def personalise_available() -> bool:
    """True when the RecLoRA ``personalise`` job kind exists in this installation."""
    return module_installed("studio.composition.reclora_job")


def available() -> bool:
    """True when at least one of the two sections has its job kind (no empty tab otherwise)."""
    return mixture_available() or personalise_available()


def build(services: Services, tab: gr.Tab, demo: gr.Blocks) -> None:
    """Lay out the tab's sections and wire their events."""
    if mixture_available():
        from app import compose_mixture

        with gr.Group(elem_id="compose-mixture"):
            compose_mixture.build_section(services, tab)
    if personalise_available():
        from app import compose_personalise

        with gr.Group(elem_id="compose-personalise"):
            compose_personalise.build_section(services, tab)
