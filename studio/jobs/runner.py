"""Run one job: claim it, call its plain handler with a registry reporter, record the outcome.

This is everything a Celery task does, as a plain function: tests call it
directly with a SQLite registry and no broker.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass

from models_db.registry import Registry
from studio.device import DeviceInfo
from studio.errors import JobCancelled, StudioError
from studio.jobs.context import JobContext
from studio.jobs.handlers import get_handler
from studio.progress import RegistryReporter
from studio.schema import parse_request
from studio.settings import Settings
from studio.versions import library_versions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerIdentity:
    """Who runs the job: recorded on the job row."""

    name: str
    device: DeviceInfo


def execute_job(job_id: int, registry: Registry, settings: Settings, worker: WorkerIdentity) -> str:
    """Run job ``job_id`` to completion and return its final status.

    Returns "skipped" without running anything when the job cannot be claimed
    (already cancelled, finished, or running elsewhere): that is how duplicate
    deliveries after a broker redelivery are made harmless.
    """
    job = registry.get_job(job_id)
    if not registry.claim_job(job_id, worker.name, worker.device.label, library_versions()):
        logger.info("job %s not claimable (status %s); skipping", job_id, job.status)
        return "skipped"
    registry.set_worker_job(worker.name, job_id)
    reporter = RegistryReporter(registry, job_id)
    attempt = job.attempts + 1
    ctx = JobContext(
        job_id=job_id,
        settings=settings,
        registry=registry,
        device=worker.device,
        attempt=attempt,
        previous_checkpoint=job.checkpoint_path if attempt > 1 else None,
    )
    try:
        if attempt > 1:
            reporter.log(f"attempt {attempt} on {worker.name} (an earlier worker stopped mid-job)", "warning")
        request = parse_request(job.request)
        handler = get_handler(request.kind)
        reporter.log(f"started on {worker.name}, device {worker.device.label}")
        result = handler(request, reporter, ctx) or {}
        registry.finish_job(job_id, "succeeded", result=result)
        reporter.log("finished")
        return "succeeded"
    except JobCancelled:
        reporter.flush()  # the page says the step it stopped at
        reporter.log("cancelled at the user's request", "warning")
        registry.finish_job(job_id, "cancelled")
        return "cancelled"
    except StudioError as exc:
        reporter.flush()
        reporter.log(str(exc), "error")
        registry.finish_job(job_id, "failed", error=str(exc))
        return "failed"
    except Exception as exc:  # any bug or library error must still end the job, never leave it running
        reporter.flush()
        reporter.log(traceback.format_exc(), "error")
        registry.finish_job(job_id, "failed", error=_friendly(exc))
        return "failed"
    finally:
        registry.set_worker_job(worker.name, None)


def _friendly(exc: BaseException) -> str:
    """A one-line explanation of an unexpected error; the traceback stays in the job log."""
    name = type(exc).__name__
    if name == "OutOfMemoryError" or isinstance(exc, MemoryError):
        return "the worker ran out of memory; try a smaller batch size or max length, or a smaller model"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{name}: {text}" if text else name
