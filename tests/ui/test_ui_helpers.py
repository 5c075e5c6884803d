"""app.ui: handlers wired by name, friendly errors, formatting."""

from __future__ import annotations

import gradio as gr
import pytest

from app.ui import bind, friendly, human_bytes, human_seconds
from studio.errors import StudioError


class FakeEvent:
    """Records what bind() passes to a Gradio event listener."""

    def __call__(self, fn, inputs, outputs, **kwargs):
        self.fn, self.inputs, self.outputs, self.kwargs = fn, inputs, outputs, kwargs
        return self


def test_bind_maps_inputs_and_outputs_by_name():
    a, b, out_x, out_y = object(), object(), object(), object()

    def handler(first, second):
        return {"y": first + second}

    event = bind(FakeEvent(), handler, {"first": a, "second": b}, {"x": out_x, "y": out_y}, show_progress="hidden")
    assert event.inputs == [a, b] and event.outputs == [out_x, out_y] and event.kwargs == {"show_progress": "hidden"}
    assert event.fn(1, 2) == {out_y: 3}  # outputs left out stay unchanged


def test_bind_refuses_outputs_that_are_not_wired():
    event = bind(FakeEvent(), lambda: {"nope": 1}, {}, {"x": object()})
    with pytest.raises(KeyError, match="nope"):  # a wiring bug, caught by the tests
        event.fn()


def test_bind_streams_generator_handlers():
    out = object()

    def handler():
        yield {"x": 1}
        yield {"x": 2}

    event = bind(FakeEvent(), handler, {}, {"x": out})
    assert list(event.fn()) == [{out: 1}, {out: 2}]


@pytest.mark.parametrize("wired", [1, 2])
def test_a_handler_that_changes_nothing_leaves_every_output_as_it_is(wired):
    """An empty result went to Gradio as one value: an error with two outputs, "{}" written into one."""
    import asyncio

    with gr.Blocks() as demo:
        boxes = {f"box{i}": gr.Textbox(value=f"kept {i}") for i in range(wired)}
        button = gr.Button()
        bind(button.click, lambda: {}, {}, boxes)
    block_fn = demo.fns[0]
    shown = asyncio.run(demo.postprocess_data(block_fn, block_fn.fn(), None))
    assert len(shown) == wired
    assert all(update == {"__type__": "update"} for update in shown), shown  # no value: unchanged


def test_friendly_errors_keep_the_studio_message_and_hide_unexpected_details():
    def refuse():
        raise StudioError("dataset 3 does not exist; pick another")

    def crash():
        raise ZeroDivisionError("division by zero")

    with pytest.raises(gr.Error, match="dataset 3 does not exist; pick another"):
        friendly(refuse)()
    with pytest.raises(gr.Error, match="Something went wrong .*server log"):
        friendly(crash)()


def test_human_formatting():
    assert (human_seconds(None), human_seconds(45), human_seconds(600), human_seconds(7500)) == (
        "—",
        "45 s",
        "10 min",
        "2 h 5 min",
    )
    assert human_bytes(512) == "512 B" and human_bytes(2048) == "2.0 KB"
