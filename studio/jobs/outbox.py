"""The registry is the outbox: a queued job is sent to the broker until a worker claims it.

A job is written to the registry first and put on the broker second. If the
broker is down, the job simply stays queued and unsent; a dispatcher loop (in
the web process and in every worker) sends it when the broker is back.
"Delivered" means a worker claimed the job (queued -> running), not that the
broker accepted the message: a broker restarted without persistence forgets
its messages, so a job still queued a while after its last send is sent again.
The atomic claim makes the duplicates this may create harmless.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from models_db.registry import Registry
from models_db.tables import JobRow, utcnow

logger = logging.getLogger(__name__)

# A job waiting behind a long one is re-sent after resend_after, then after twice that, and so
# on up to this: a lost message is replaced within minutes, a waiting one gathers few duplicates.
MAX_RESEND_DELAY_SECONDS = 3600.0


class Sender(Protocol):
    """What the outbox needs of a dispatcher: put a job id on the queue, return the task id."""

    def send(self, job_id: int) -> str: ...


@dataclass(frozen=True)
class SendOutcome:
    """One send through the outbox: ``sent``, or ``error`` (the broker's reason), or neither.

    Neither means the job was not this caller's to send: another dispatcher took
    it first, or it was claimed or cancelled meanwhile.
    """

    sent: bool = False
    error: str | None = None


@dataclass
class ResendReport:
    """What one pass of :func:`resend_pending` did."""

    sent: list[int] = field(default_factory=list)
    error: str | None = None  # the broker's reason when a send failed (the pass stops there)
    waiting: int = 0  # queued jobs left unclaimed and not yet due for a re-send


def broker_reason(exc: BaseException) -> str:
    """The first line of a broker exception, for users and the registry."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def waiting_notice(reason: str) -> str:
    """What the user is told when a job is kept because the broker is unreachable."""
    return f"queued — waiting for the job queue (broker unreachable: {reason}), it will be sent when it is back"


def queue_notice(job: JobRow) -> str | None:
    """The waiting notice of ``job`` while it is queued and unsent because of the broker, else None."""
    if job.status == "queued" and job.sent_at is None and job.send_error:
        return waiting_notice(job.send_error)
    return None


def send_job(registry: Registry, dispatcher: Sender, job_id: int, seen_sends: int) -> SendOutcome:
    """Send job ``job_id`` once, recording the send (or the broker's refusal) in the registry.

    ``seen_sends`` is the job's ``sends`` as the caller read it; see
    :meth:`Registry.mark_job_sending`. Never raises for a broker error.
    """
    if not registry.mark_job_sending(job_id, seen_sends):
        return SendOutcome()
    try:
        task_id = dispatcher.send(job_id)
    except Exception as exc:  # any broker or transport error: the job waits in the registry
        reason = broker_reason(exc)
        registry.record_job_unsent(job_id, seen_sends + 1, reason)
        return SendOutcome(error=reason)
    registry.record_job_sent(job_id, task_id)
    return SendOutcome(sent=True)


def resend_due_at(job: JobRow, resend_after: float) -> datetime | None:
    """When ``job`` should be sent again if still unclaimed; None means now (it was never sent)."""
    if job.sent_at is None:
        return None
    doublings = min(max(job.sends, 1) - 1, 20)
    delay = min(resend_after * 2**doublings, max(resend_after, MAX_RESEND_DELAY_SECONDS))
    return job.sent_at + timedelta(seconds=delay)


def resend_pending(
    registry: Registry,
    dispatcher: Sender,
    now: datetime | None = None,
    resend_after: float = 120.0,
    *,
    all_unclaimed: bool = False,
) -> ResendReport:
    """Send every queued, unclaimed, uncancelled job that was never sent or is due for a re-send.

    ``all_unclaimed`` sends every unclaimed job now, due or not (the broker restarted and
    lost its messages). Stops at the first broker error (the broker is down; the rest would
    fail the same way) and reports it. Safe to run in several processes at once.
    """
    now = now or utcnow()
    report = ResendReport()
    for job in registry.jobs_awaiting_delivery():
        due = resend_due_at(job, resend_after)
        if due is not None and due > now and not all_unclaimed:
            report.waiting += 1
            continue
        outcome = send_job(registry, dispatcher, job.id, job.sends)
        if outcome.error is not None:
            report.error = outcome.error
            return report
        if outcome.sent:
            report.sent.append(job.id)
            registry.add_job_log(job.id, _send_log_line(job, now), "warning" if job.sent_at else "info")
    return report


def _send_log_line(job: JobRow, now: datetime) -> str:
    if job.sent_at is not None:
        waited = (now - job.sent_at).total_seconds()
        return f"not claimed by a worker {waited:.0f} s after it was sent; sent again (the broker may have lost it)"
    if job.send_error:
        return "sent to the job queue (the broker is reachable again)"
    return "sent to the job queue"


class OutboxLoop:
    """A daemon thread calling :func:`resend_pending` every ``interval`` seconds."""

    def __init__(self, registry: Registry, dispatcher: Sender, interval: float, resend_after: float):
        self.registry = registry
        self.dispatcher = dispatcher
        self.interval = interval
        self.resend_after = resend_after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None
        self._broker_instance: str | None = None

    def _broker_restarted(self) -> bool:
        """Whether the broker process changed since the last pass (see ``broker_instance`` of the dispatcher)."""
        probe = getattr(self.dispatcher, "broker_instance", None)
        instance = probe() if probe is not None else None
        if instance is None:
            return False
        restarted = self._broker_instance is not None and instance != self._broker_instance
        self._broker_instance = instance
        return restarted

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="studio-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> ResendReport | None:
        """One pass; logs when the broker goes away or comes back, not on every pass."""
        try:
            restarted = self._broker_restarted()
            if restarted:
                logger.warning("the job queue restarted; sending every unclaimed job again (it may have lost them)")
            report = resend_pending(
                self.registry, self.dispatcher, resend_after=self.resend_after, all_unclaimed=restarted
            )
        except Exception as exc:  # a database hiccup must not end the loop
            logger.warning("outbox pass failed: %s", exc)
            return None
        if report.error and report.error != self._last_error:
            logger.warning("job queue unreachable (%s); queued jobs will be sent when it is back", report.error)
        elif self._last_error and not report.error:
            logger.info("job queue reachable again")
        self._last_error = report.error
        if report.sent:
            logger.info("outbox sent jobs %s", report.sent)
        return report

    def _run(self) -> None:
        self.run_once()
        while not self._stop.wait(self.interval):
            self.run_once()
