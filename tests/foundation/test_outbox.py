"""The registry as outbox, without a broker: jobs wait while the queue is down and are (re-)sent by a plain function."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from studio.device import detect_device
from studio.jobs.outbox import MAX_RESEND_DELAY_SECONDS, OutboxLoop, queue_notice, resend_due_at, resend_pending
from studio.jobs.runner import WorkerIdentity, execute_job
from studio.schema import CheckRequest
from studio.services.jobs import JobService

RESEND_AFTER = 60.0
REFUSED = "Error 111 connecting to 127.0.0.1:6379. Connection refused."


class FlakyDispatcher:
    """A broker that is down for the first ``failures`` sends, then takes every message."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.attempts: list[int] = []
        self.sent: list[int] = []

    def send(self, job_id: int) -> str:
        self.attempts.append(job_id)
        if len(self.attempts) <= self.failures:
            raise ConnectionError(REFUSED)
        self.sent.append(job_id)
        return f"task-{job_id}-{len(self.sent)}"

    def revoke(self, task_id):
        pass


@pytest.fixture
def broker():
    return FlakyDispatcher()


@pytest.fixture
def jobs(registry, broker):
    return JobService(registry, broker)


def test_a_job_submitted_while_the_broker_is_down_is_sent_when_it_is_back(registry, broker, jobs):
    broker.failures = 2
    job = jobs.submit(CheckRequest(steps=2))
    assert job.status == "queued" and REFUSED in queue_notice(job)

    still_down = resend_pending(registry, broker, resend_after=RESEND_AFTER)
    assert (still_down.sent, still_down.error) == ([], REFUSED)
    assert registry.get_job(job.id).sent_at is None

    back = resend_pending(registry, broker, resend_after=RESEND_AFTER)
    assert (back.sent, back.error) == ([job.id], None)
    row = registry.get_job(job.id)
    assert (row.sends, row.send_error, row.celery_task_id) == (1, None, f"task-{job.id}-1")
    assert row.sent_at is not None and queue_notice(row) is None
    assert "reachable again" in registry.job_logs(job.id)[-1].message
    # Sent once: a later pass within the time-out leaves it alone.
    assert resend_pending(registry, broker, resend_after=RESEND_AFTER).sent == []
    assert broker.sent == [job.id]


def test_a_pass_stops_at_the_first_broker_error(registry, broker, jobs):
    broker.failures = 10
    first, second = jobs.submit(CheckRequest(steps=2)), jobs.submit(CheckRequest(steps=2))
    broker.attempts.clear()
    report = resend_pending(registry, broker, resend_after=RESEND_AFTER)
    assert report.error == REFUSED and broker.attempts == [first.id]
    assert registry.get_job(second.id).send_error == REFUSED  # from its own submit


def test_cancelled_jobs_are_never_sent(registry, broker, jobs):
    broker.failures = 1
    job = jobs.submit(CheckRequest(steps=2))
    assert jobs.cancel(job.id) == "cancelled"
    assert resend_pending(registry, broker, resend_after=RESEND_AFTER).sent == []
    assert broker.sent == []


def test_a_claimed_job_is_never_resent(registry, broker, jobs):
    job = jobs.submit(CheckRequest(steps=2))
    assert registry.claim_job(job.id, "w1", "cpu", {})
    much_later = registry.get_job(job.id).sent_at + timedelta(days=1)
    assert resend_pending(registry, broker, now=much_later, resend_after=RESEND_AFTER).sent == []
    assert broker.sent == [job.id]


def test_an_unclaimed_job_is_resent_after_the_time_out_and_runs_once(registry, broker, jobs, settings):
    job = jobs.submit(CheckRequest(steps=2))
    sent_at = registry.get_job(job.id).sent_at

    early = resend_pending(registry, broker, now=sent_at + timedelta(seconds=RESEND_AFTER - 1), resend_after=60)
    assert (early.sent, early.waiting) == ([], 1)
    late = resend_pending(registry, broker, now=sent_at + timedelta(seconds=RESEND_AFTER + 1), resend_after=60)
    assert late.sent == [job.id] and broker.sent == [job.id, job.id]
    row = registry.get_job(job.id)
    assert row.sends == 2 and row.celery_task_id == f"task-{job.id}-2"
    assert "sent again" in registry.job_logs(job.id)[-1].message
    # The next re-send waits twice as long: a job waiting behind a long one gathers few duplicates.
    assert resend_due_at(row, RESEND_AFTER) == row.sent_at + timedelta(seconds=2 * RESEND_AFTER)

    # Both messages arrive: the atomic claim lets only one of them run the job.
    worker = WorkerIdentity("w1", detect_device("cpu"))
    assert [execute_job(job.id, registry, settings, worker) for _ in broker.sent] == ["succeeded", "skipped"]


def test_resend_delay_doubles_up_to_a_cap(registry, broker, jobs):
    row = registry.get_job(jobs.submit(CheckRequest(steps=2)).id)
    delays = []
    for sends in (1, 2, 3, 40):
        row.sends = sends
        delays.append((resend_due_at(row, RESEND_AFTER) - row.sent_at).total_seconds())
    assert delays == [RESEND_AFTER, 2 * RESEND_AFTER, 4 * RESEND_AFTER, MAX_RESEND_DELAY_SECONDS]


def test_two_dispatchers_send_a_due_job_once(registry, jobs, broker):
    broker.failures = 1
    job = jobs.submit(CheckRequest(steps=2))
    seen = registry.get_job(job.id).sends
    assert registry.mark_job_sending(job.id, seen) is True
    assert registry.mark_job_sending(job.id, seen) is False  # the other dispatcher read the same row


def test_a_requeued_job_is_sent_at_once(registry, broker, jobs):
    job = jobs.submit(CheckRequest(steps=2))
    registry.claim_job(job.id, "crashed", "cpu", {})
    assert registry.requeue_job(job.id, "worker crashed")
    assert resend_pending(registry, broker, resend_after=RESEND_AFTER).sent == [job.id]
    assert broker.sent == [job.id, job.id]


def test_the_loop_sends_once_the_broker_is_back(registry, broker, jobs):
    broker.failures = 3
    job = jobs.submit(CheckRequest(steps=2))
    loop = OutboxLoop(registry, broker, interval=0.02, resend_after=RESEND_AFTER)
    loop.start()
    try:
        deadline = time.monotonic() + 20
        # sent_at is set while a send is in flight (and undone when it fails): wait for the recorded task.
        while registry.get_job(job.id).celery_task_id is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        loop.stop()
    assert registry.get_job(job.id).celery_task_id == f"task-{job.id}-1"
    assert broker.attempts == [job.id] * 4


class RestartingBroker(FlakyDispatcher):
    """A broker whose process id (Redis's run_id) the test changes, as a restart does."""

    def __init__(self):
        super().__init__()
        self.instance = "run-1"

    def broker_instance(self) -> str:
        return self.instance


def test_a_broker_restart_resends_every_unclaimed_job_at_once(registry):
    broker = RestartingBroker()
    jobs = JobService(registry, broker)
    first, second = jobs.submit(CheckRequest(steps=2)), jobs.submit(CheckRequest(steps=2))
    loop = OutboxLoop(registry, broker, interval=60, resend_after=RESEND_AFTER)
    assert loop.run_once().sent == []  # both sent at submit, not due again for a minute
    broker.instance = "run-2"  # restarted without persistence: its messages are gone
    assert sorted(loop.run_once().sent) == [first.id, second.id]
    assert loop.run_once().sent == []  # once per restart, then the usual delays again
    assert broker.sent == [first.id, second.id, first.id, second.id]
