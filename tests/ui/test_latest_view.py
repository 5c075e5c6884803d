"""Newest read wins: a slow refresh that read before a Cancel cannot put the old state back on the page."""

from __future__ import annotations

import copy
import threading
import time

import gradio as gr

from app import tab_jobs
from app.latest_view import LatestView, newest_read_wins


def test_a_refresh_that_read_before_a_newer_one_was_shown_is_dropped():
    view = LatestView()
    release, reading = threading.Event(), threading.Event()

    def slow_refresh():
        reading.set()  # this read happens now: before the cancel below
        release.wait(5)
        return {"detail": "running", "queue": "old"}

    results = {}
    worker = threading.Thread(target=lambda: results.update(tick=newest_read_wins(slow_refresh)(view=view)))
    worker.start()
    assert reading.wait(5)
    cancel = newest_read_wins(lambda: {"detail": "cancelled", "token": "new"}, always=("token",))
    assert cancel(view=view) == {"detail": "cancelled", "token": "new"}  # started later, shown first
    release.set()
    worker.join(5)
    assert results["tick"] == {}  # the stale "running" leaves the page as the cancel left it
    # the next refresh reads afresh and is shown
    assert newest_read_wins(lambda: {"detail": "cancelled"})(view=view) == {"detail": "cancelled"}


def test_outputs_named_always_survive_a_dropped_answer():
    view = LatestView()
    started_first = newest_read_wins(lambda: {"detail": "old", "retry_token": "t2"}, always=("retry_token",))
    # a handler that started later was already shown
    view.show(time.monotonic() + 60)
    assert started_first(view=view) == {"retry_token": "t2"}


def test_each_session_gets_its_own_clock():
    state = gr.State(LatestView)
    first, second = copy.deepcopy(state.value()), copy.deepcopy(state.value())
    assert first is not second
    assert first.show(10.0) and not first.show(5.0)
    assert second.show(5.0)  # another session's clock is untouched


def test_the_jobs_tab_builds_with_the_guard(services):
    with gr.Blocks() as demo, gr.Tab("Jobs") as tab:
        tab_jobs.build(services, tab, demo)
    states = [b for b in demo.blocks.values() if isinstance(b, gr.State) and b.value is LatestView]
    assert len(states) == 1
