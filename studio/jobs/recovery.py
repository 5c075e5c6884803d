"""Jobs whose worker died: re-queue them (they resume from their last checkpoint) or fail them.

Nothing may stay "running" forever. Two signals say a worker is gone:
its own restart (the previous incarnation's jobs are dead) and an expired
heartbeat (the job's heartbeat is refreshed by its live worker every few seconds).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from models_db.registry import Registry, stale_cutoff
from studio.settings import Settings

logger = logging.getLogger(__name__)

Resubmit = Callable[[int], None]


def recover_orphaned_jobs(
    registry: Registry,
    settings: Settings,
    resubmit: Resubmit,
    dead_workers: Iterable[str] = (),
) -> dict[int, str]:
    """Re-queue or fail every orphaned running job; returns {job_id: "requeued" | "failed"}.

    A job is re-queued while it has attempts left (``settings.job_max_attempts``),
    otherwise failed with a message naming the worker.
    """
    outcome: dict[int, str] = {}
    cutoff = stale_cutoff(settings.worker_dead_after_seconds)
    for job in registry.orphaned_jobs(dead_workers, cutoff):
        worker = job.worker_host or "an unknown worker"
        if job.attempts < settings.job_max_attempts:
            reason = f"worker {worker} stopped during attempt {job.attempts}; re-queued"
            if registry.requeue_job(job.id, reason):
                registry.add_job_log(job.id, reason, "warning")
                resubmit(job.id)
                outcome[job.id] = "requeued"
        else:
            error = (
                f"worker {worker} stopped while running this job, {job.attempts} attempt(s) in all; "
                "retry it from the Jobs tab or `studio jobs retry`"
            )
            registry.add_job_log(job.id, error, "error")
            registry.finish_job(job.id, "failed", error=error)
            outcome[job.id] = "failed"
        logger.warning("job %s: %s", job.id, outcome.get(job.id))
    return outcome
