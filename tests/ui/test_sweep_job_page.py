"""Jobs tab: a sweep's page and queue row count trials, not steps, and point to the Sweep tab."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from app import job_pages


def sweep_job(status: str, step: int, **request) -> SimpleNamespace:
    """A sweep job row as the registry holds it: its step is the trials finished, total_steps the trials."""
    return SimpleNamespace(
        id=7,
        kind="sweep",
        name="sweep lora",
        status=status,
        step=step,
        total_steps=2,
        progress=step / 2,
        eta_seconds=None,
        message=f"{step}/2 trials",
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        request={"mode": "search", **request},
    )


def test_a_sweep_counts_trials():
    assert job_pages.progress_line(sweep_job("running", 1)).startswith("trial 1 of 2 (50%)")
    assert job_pages.progress_line(sweep_job("cancelled", 0)).startswith("stopped at trial 0 of 2")
    assert job_pages.step_cell(sweep_job("running", 1)) == "1/2 trials"
    assert job_pages.view_of(sweep_job("running", 1)).title == "settings sweep"


def test_a_sweeps_page_points_to_the_sweep_tab():
    (line,) = job_pages.view_of(sweep_job("running", 1)).describe(None, sweep_job("running", 1, mode="compare"))
    assert "comparison's charts, trials and best adapter are in the Sweep tab" in line
