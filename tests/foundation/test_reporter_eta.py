"""Reporter.eta: paced on the steps while there are steps left, unknown past the last one."""

from __future__ import annotations

import pytest

from studio.progress import MemoryReporter


def test_eta_follows_the_pace_and_is_unknown_once_the_steps_are_done(monkeypatch):
    clock = iter([0.0, 10.0, 20.0, 40.0, 50.0])  # created; then one reading per eta() call
    monkeypatch.setattr("studio.progress.time.monotonic", lambda: next(clock))
    reporter = MemoryReporter()
    assert reporter.eta(0, 4) is None  # the first step only starts the clock
    assert reporter.eta(1, 4) == pytest.approx(30.0)  # 10 s a step, 3 steps left
    assert reporter.eta(3, 4) == pytest.approx(10.0)  # 30 s for 3 steps, 1 left
    assert reporter.eta(4, 4) is None  # was 0.0: what runs after the last step is not paced by steps
