"""Compose tab, mixtures: Show routing always writes the status line (a stale warning stayed up before)."""

from __future__ import annotations

import gradio as gr

from app import compose_mixture, tab_compose


def route_handlers(services) -> tuple[list, gr.Markdown]:
    """The built section's Show routing handlers (button and Enter in the prompt) and its status line."""
    with gr.Blocks() as demo, gr.Tab(tab_compose.TITLE) as tab:
        compose_mixture.build_section(services, tab)
    [status] = [b for b in demo.blocks.values() if b.elem_id == "mix-status"]
    handlers = [fn for fn in demo.fns.values() if fn.name == "on_route"]
    return handlers, status


def test_show_routing_without_a_mixture_says_so_in_the_status(services):
    handlers, status = route_handlers(services)
    assert [event for fn in handlers for _, event in fn.targets] == ["click", "submit"]
    for fn in handlers:
        out = fn.fn(None, "hello")
        assert out[status] == compose_mixture.PICK_A_MIXTURE  # replaces whatever the status said before


def test_routing_a_chosen_mixture_clears_the_status(services, monkeypatch):
    monkeypatch.setattr(compose_mixture, "mixture_charts", lambda *_: {"heatmap": None, "usage": None})
    view = compose_mixture.routing_view(services, 7, "hello")
    assert view["status"] == ""  # an earlier "⚠ Some settings need fixing" goes away
    assert compose_mixture.routing_view(services, None, "")["status"] == compose_mixture.PICK_A_MIXTURE
