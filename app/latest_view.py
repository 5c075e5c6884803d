"""Newest read wins: a view refreshed by several events shows no answer older than one it showed.

The Jobs tab's timer, its Cancel button and its job picker all render the same panes, and Gradio
runs different events of one page at the same time. A timer refresh that read the database just
before a Cancel, but finished after it, used to put "running" back over "cancelled" until the
next tick (the browser test caught it). Each page gets a :class:`LatestView` (a ``gr.State``: one
object per browser session, the same one in every event of that session); :func:`newest_read_wins`
drops the panes of a handler that started before the last one shown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class LatestView:
    """When the newest shown answer of one page's view was read (per session, thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shown = float("-inf")

    def __deepcopy__(self, memo: dict[int, Any]) -> LatestView:
        # gr.State deep-copies its default for each new session: a fresh clock (a lock cannot be copied)
        return LatestView()

    def show(self, started: float) -> bool:
        """Whether an answer read from ``started`` (time.monotonic) may be shown; records it when it may."""
        with self._lock:
            if started < self._shown:
                return False
            self._shown = started
            return True


def newest_read_wins(fn: Callable[..., dict[str, Any]], always: tuple[str, ...] = ()) -> Callable[..., dict[str, Any]]:
    """``fn`` with a ``view`` argument (the page's :class:`LatestView`): its outputs are dropped (left
    unchanged on the page) when another handler of the view, started later, has already shown its own;
    the outputs named in ``always`` (e.g. a fresh submission token) are returned anyway."""

    def guarded(view: LatestView, **inputs: Any) -> dict[str, Any]:
        started = time.monotonic()
        result = fn(**inputs)
        if view.show(started):
            return result
        return {name: value for name, value in result.items() if name in always}

    guarded.__name__ = getattr(getattr(fn, "func", fn), "__name__", "handler")
    return guarded
