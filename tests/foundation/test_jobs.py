"""The job path without a broker: service -> registry -> runner -> handler -> reporter."""

from __future__ import annotations

import threading
import time

import pytest

from studio.device import detect_device
from studio.errors import StudioError
from studio.jobs.outbox import queue_notice
from studio.jobs.recovery import recover_orphaned_jobs
from studio.jobs.runner import WorkerIdentity, execute_job
from studio.schema import CheckRequest
from studio.services.jobs import JobService


class RecordingDispatcher:
    """Stands in for Celery: remembers what would have been queued."""

    def __init__(self):
        self.sent: list[int] = []
        self.revoked: list[str | None] = []

    def send(self, job_id: int) -> str:
        self.sent.append(job_id)
        return f"task-{job_id}-{len(self.sent)}"

    def revoke(self, task_id):
        self.revoked.append(task_id)


class BrokenDispatcher(RecordingDispatcher):
    def send(self, job_id: int) -> str:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


@pytest.fixture
def worker():
    return WorkerIdentity("test-worker", detect_device("cpu"))


@pytest.fixture
def jobs(registry):
    return JobService(registry, RecordingDispatcher())


def test_submit_records_request_schema_and_queues(jobs, registry):
    job = jobs.submit(CheckRequest(steps=3, seed=7))
    assert jobs.dispatcher.sent == [job.id]
    row = registry.get_job(job.id)
    assert row.status == "queued" and row.kind == "check" and row.seed == 7
    assert row.request == {"kind": "check", "steps": 3, "step_seconds": 0.0, "seed": 7, "fail_at_step": None}
    assert row.schema_version == 1 and row.celery_task_id == f"task-{job.id}-1"
    assert row.sends == 1 and row.sent_at is not None and queue_notice(row) is None


def test_unreachable_broker_keeps_the_job_queued_with_a_notice(registry):
    service = JobService(registry, BrokenDispatcher())
    job = service.submit(CheckRequest())
    assert (job.status, job.sent_at, job.sends, job.error) == ("queued", None, 0, None)
    assert "Connection refused" in job.send_error
    notice = queue_notice(job)
    assert notice.startswith("queued — waiting for the job queue (broker unreachable: Error 111")
    assert notice.endswith("it will be sent when it is back")
    assert [line.message for line in registry.job_logs(job.id)] == [notice]


def test_invalid_request_names_the_field(jobs):
    with pytest.raises(StudioError, match="^Steps: must be at least 1$"):
        jobs.submit({"kind": "check", "steps": 0})


def test_runner_stores_metrics_progress_and_result(jobs, registry, settings, worker):
    job = jobs.submit(CheckRequest(steps=15))
    assert execute_job(job.id, registry, settings, worker) == "succeeded"
    row = registry.get_job(job.id)
    assert row.status == "succeeded" and row.progress == 1.0 and row.step == 15
    assert row.worker_host == "test-worker" and row.device.startswith("cpu")
    assert "torch" in row.library_versions and "code" in row.library_versions
    losses = [m.value for m in registry.metrics(job.id, ["loss"])]
    assert len(losses) == 15 and losses[-1] < losses[0] / 2  # the regression really converges
    assert row.result["final_loss"] == pytest.approx(losses[-1])


def test_duplicate_delivery_is_skipped(jobs, registry, settings, worker):
    job = jobs.submit(CheckRequest(steps=2))
    assert execute_job(job.id, registry, settings, worker) == "succeeded"
    assert execute_job(job.id, registry, settings, worker) == "skipped"
    assert len(registry.metrics(job.id)) == 2


def test_failure_is_recorded_with_the_reason(jobs, registry, settings, worker):
    job = jobs.submit(CheckRequest(steps=5, fail_at_step=3))
    assert execute_job(job.id, registry, settings, worker) == "failed"
    row = registry.get_job(job.id)
    assert row.status == "failed" and "fail at step 3" in row.error
    assert [m.step for m in registry.metrics(job.id)] == [1, 2]


def test_a_job_stopped_early_records_the_step_it_reached(jobs, registry, settings, worker):
    """Progress writes are throttled; when a job stops, its last step is written all the same."""
    job = jobs.submit(CheckRequest(steps=50, fail_at_step=40))
    assert execute_job(job.id, registry, settings, worker) == "failed"
    row = registry.get_job(job.id)
    assert (row.step, row.total_steps, row.progress) == (39, 50, pytest.approx(39 / 50))


def test_cancel_stops_a_running_job_between_steps(jobs, registry, settings, worker):
    job = jobs.submit(CheckRequest(steps=400, step_seconds=0.02))
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("s", execute_job(job.id, registry, settings, worker)))
    thread.start()
    deadline = time.monotonic() + 20
    while registry.get_job(job.id).step < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert jobs.cancel(job.id) == "running"
    thread.join(20)
    assert outcome["s"] == "cancelled"
    row = registry.get_job(job.id)
    assert row.status == "cancelled" and row.step < 400
    assert row.step == max(m.step for m in registry.metrics(job.id, ["loss"]))  # where it really stopped
    assert jobs.dispatcher.revoked == [row.celery_task_id]


def test_retry_resubmits_the_same_request(jobs, registry, settings, worker):
    job = jobs.submit(CheckRequest(steps=2, fail_at_step=1))
    execute_job(job.id, registry, settings, worker)
    again = jobs.retry(job.id)
    assert again.id != job.id and again.request == registry.get_job(job.id).request
    with pytest.raises(StudioError, match="still queued"):
        jobs.retry(again.id)


def test_recovery_requeues_then_fails_after_max_attempts(jobs, registry, settings):
    settings.job_max_attempts = 2
    job = jobs.submit(CheckRequest(steps=2))
    registry.claim_job(job.id, "crashed", "cpu", {})
    resent: list[int] = []
    assert recover_orphaned_jobs(registry, settings, resent.append, dead_workers=["crashed"]) == {job.id: "requeued"}
    assert resent == [job.id] and registry.get_job(job.id).status == "queued"
    registry.claim_job(job.id, "crashed", "cpu", {})  # attempt 2 also dies
    assert recover_orphaned_jobs(registry, settings, resent.append, dead_workers=["crashed"]) == {job.id: "failed"}
    row = registry.get_job(job.id)
    assert row.status == "failed" and "crashed" in row.error and row.attempts == 2


def test_recovery_leaves_jobs_of_live_workers_alone(jobs, registry, settings):
    job = jobs.submit(CheckRequest(steps=2))
    registry.claim_job(job.id, "alive", "cpu", {})
    assert recover_orphaned_jobs(registry, settings, lambda _id: None, dead_workers=["other"]) == {}
    assert registry.get_job(job.id).status == "running"
