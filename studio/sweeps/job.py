"""The ``sweep`` job: a thin handler around :func:`studio.sweeps.driver.run_sweep`."""

from __future__ import annotations

from typing import Any

from studio.jobs.context import JobContext
from studio.progress import Reporter
from studio.schema import SweepRequest


def _job_service(ctx: JobContext) -> Any:
    """A job service on the worker's registry and queue, to submit the trials' train jobs."""
    from studio.services.jobs import JobService
    from workers.celery_app import create_celery_app
    from workers.dispatch import CeleryDispatcher

    settings = ctx.settings
    dispatcher = CeleryDispatcher(
        create_celery_app(settings), settings.queue_name, supports_broadcast=not settings.broker_is_embedded
    )
    return JobService(ctx.registry, dispatcher)


def run_sweep_job(request: SweepRequest, reporter: Reporter, ctx: JobContext) -> dict[str, Any]:
    """Run or continue the sweep (a re-run after a restart re-attaches its running trials)."""
    from studio.jobs.inline import inline_worker_name
    from studio.jobs.runner import WorkerIdentity
    from studio.sweeps.driver import LocalLauncher, QueueLauncher, run_sweep

    jobs = _job_service(ctx)
    if request.trials_on == "here":
        launcher: Any = LocalLauncher(jobs, ctx.settings, WorkerIdentity(inline_worker_name(), ctx.device))
    else:
        launcher = QueueLauncher(jobs)
    if ctx.attempt > 1:
        reporter.log("continuing the sweep's study after a restart", "warning")
    return run_sweep(request, reporter, ctx.registry, ctx.job_id, launcher)
