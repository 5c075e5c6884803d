"""A worker SIGKILLed mid-job: its job is re-queued or failed, and never stays "running"."""

from __future__ import annotations

import pytest

from studio.schema import CheckRequest

from .helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

# Long enough to be killed mid-way (it is killed once past step 5), short enough to run again:
# the re-queued attempt starts from step 1 (the check job keeps no checkpoint).
LONG_CHECK = CheckRequest(steps=100, step_seconds=0.05)


def _kill_mid_job(topology, start_worker, name: str):
    """Start worker ``name``, let it get a few steps into a long job, SIGKILL it; returns (job id, worker)."""
    svc = topology.services()
    worker = start_worker(topology, name=name)
    job_id = svc.jobs.submit(LONG_CHECK).id
    wait_for(
        lambda: (j := svc.jobs.get(job_id)).status == "running" and j.step > 5,
        30,
        lambda: f"job {job_id} to run ({svc.jobs.get(job_id).status}); worker log:\n{worker.log()[-2000:]}",
    )
    worker.kill()
    assert svc.jobs.get(job_id).status == "running"  # nobody has noticed yet
    return job_id, worker


def _logs(svc, job_id: int) -> str:
    return "\n".join(line.message for line in svc.jobs.logs(job_id))


def test_restarted_worker_requeues_its_job(topology, start_worker):
    svc = topology.services()
    job_id, dead = _kill_mid_job(topology, start_worker, "crashy")

    start_worker(topology, name="crashy")
    job = svc.jobs.wait(job_id, timeout=60, poll_seconds=0.2)

    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    assert job.worker_host == dead.name
    assert f"worker {dead.name} stopped during attempt 1; re-queued" in _logs(svc, job_id)


def test_restarted_worker_fails_a_job_out_of_attempts(redis_pg, start_worker):
    svc = redis_pg.services()
    job_id, dead = _kill_mid_job(redis_pg, start_worker, "crashy")

    start_worker(redis_pg, name="crashy", STUDIO_JOB_MAX_ATTEMPTS="1")
    job = svc.jobs.wait(job_id, timeout=30, poll_seconds=0.2)

    assert job.status == "failed"
    assert job.attempts == 1
    assert f"worker {dead.name} stopped while running this job" in job.error


def test_another_worker_recovers_a_job_whose_heartbeat_expired(redis_pg, start_worker):
    svc = redis_pg.services()
    job_id, dead = _kill_mid_job(redis_pg, start_worker, "worker-a")

    survivor = start_worker(redis_pg, name="worker-b")
    # Worker B re-queues A's job once its heartbeat is older than STUDIO_WORKER_DEAD_AFTER (3 s),
    # at its start or within six of its 0.5 s heartbeats, then runs it itself.
    wait_for(lambda: svc.jobs.get(job_id).worker_host != dead.name, 10, f"worker B to take over job {job_id}")
    job = svc.jobs.wait(job_id, timeout=60, poll_seconds=0.2)

    assert job.status == "succeeded", job.error
    assert (job.attempts, job.worker_host) == (2, survivor.name)
    assert f"worker {dead.name} stopped during attempt 1; re-queued" in _logs(svc, job_id)
