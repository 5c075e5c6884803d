"""A running job past its last step (saving, a transfer kit): no "about 0 s left" for minutes."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from app import job_pages, tab_jobs


def running_job(step: int, total: int, eta: float | None, message: str | None = None) -> SimpleNamespace:
    """A running training job as the registry returns it (only the fields the Jobs tab reads)."""
    return SimpleNamespace(
        id=1,
        name="lora on 'colors' (#1)",
        kind="train",
        status="running",
        step=step,
        total_steps=total,
        progress=step / total,
        eta_seconds=eta,
        message=message,
        device="cpu",
        worker_host=None,
        created_at=datetime.now(UTC),
        started_at=datetime.now(UTC),
    )


def test_a_job_past_its_last_step_says_it_is_finishing_not_zero_seconds_left():
    job = running_job(3, 3, 0.0, "transfer kit: discriminator step 14/23")
    line = job_pages.progress_line(job)
    assert "0 s left" not in line
    assert line == "all 3 steps done, finishing — transfer kit: discriminator step 14/23"
    assert job_pages.time_left(job) is None
    assert "<td>0 s</td>" not in tab_jobs._queue_table([job], 1, 1)


def test_a_job_still_stepping_keeps_its_eta():
    job = running_job(10, 30, 40.0, "training")
    assert job_pages.progress_line(job) == "step 10 of 30 (33%), about 40 s left — training"
    assert "<td>40 s</td>" in tab_jobs._queue_table([job], 1, 1)


def test_the_device_line_says_running_on_while_it_runs_and_ran_on_after(services):
    from studio.schema import CheckRequest

    job = services.registry.get_job(services.jobs.submit(CheckRequest(steps=3)).id)
    job.status, job.device, job.step, job.total_steps = "running", "cpu", 1, 3  # as a worker's claim leaves it
    assert "running on cpu" in job_pages.detail_markdown(services, job)  # was "ran on cpu" while running
    job.status = "succeeded"
    assert "ran on cpu" in job_pages.detail_markdown(services, job)
