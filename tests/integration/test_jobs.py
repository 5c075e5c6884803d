"""A check job through a real queue and a real worker: results, metrics and cancellation."""

from __future__ import annotations

import time

import pytest

from studio.schema import CheckRequest

from .helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_check_job_runs_on_a_real_worker(topology, start_worker):
    svc = topology.services()
    worker = start_worker(topology)

    job = svc.jobs.wait(svc.jobs.submit(CheckRequest(steps=20)).id, timeout=60, poll_seconds=0.1)

    assert job.status == "succeeded", job.error
    assert (job.attempts, job.step, job.total_steps, job.progress) == (1, 20, 20, 1.0)
    assert job.worker_host == worker.name
    assert job.device.startswith(("cpu", "cuda"))
    assert {"torch", "celery", "sqlalchemy", "code"} <= job.library_versions.keys()
    loss = svc.jobs.metrics(job.id, ["loss"])
    assert [m.step for m in loss] == list(range(1, 21))
    assert loss[-1].value < 0.5 * loss[0].value, "the check job's loss should fall"
    assert job.result["final_loss"] == pytest.approx(loss[-1].value)
    if topology.name == "redis_pg":
        _assert_stored_in_postgresql(topology.database_url, job.id, [m.value for m in loss])


def _assert_stored_in_postgresql(url: str, job_id: int, loss: list[float]) -> None:
    """Read the rows back with plain SQL: the registry of this topology really is PostgreSQL."""
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT value FROM metrics WHERE job_id = %s AND name = 'loss' ORDER BY step", (job_id,)
        ).fetchall()
        status, worker, versions = conn.execute(
            "SELECT status, worker_host, library_versions FROM jobs WHERE id = %s", (job_id,)
        ).fetchone()
    assert [value for (value,) in rows] == pytest.approx(loss)
    assert status == "succeeded" and worker.startswith("studio@") and "torch" in versions


def test_cancel_queued_and_running_jobs(topology, start_worker):
    svc = topology.services()
    # Cancelled while no worker is up: its message is still delivered later, and must be refused.
    queued = svc.jobs.submit(CheckRequest(steps=5))
    assert svc.jobs.cancel(queued.id) == "cancelled"

    worker = start_worker(topology)
    running = svc.jobs.submit(CheckRequest(steps=200, step_seconds=0.05))
    wait_for(lambda: svc.jobs.get(running.id).step > 3, 30, "the long check job to start")
    asked = time.monotonic()
    svc.jobs.cancel(running.id)
    job = svc.jobs.wait(running.id, timeout=15, poll_seconds=0.1)

    assert job.status == "cancelled"
    assert time.monotonic() - asked < 5
    assert job.step < 200
    # The queue is FIFO and the worker takes one message at a time, so the cancelled
    # job's message came first: it was received and skipped, never run.
    never_run = svc.jobs.get(queued.id)
    assert never_run.status == "cancelled"
    assert (never_run.attempts, never_run.started_at, never_run.worker_host) == (0, None, None)
    assert "'skipped'" in worker.log()
