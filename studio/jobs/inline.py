"""Run a queued job in the calling process (`--inline`), through the same runner the workers use.

The job is still submitted the normal way (registry row and queue message), then
claimed atomically by ``execute_job``: if a worker got it first this process just
waits, and a worker that comes up later finds the job no longer queued and skips
its message. While the job runs here its heartbeat is kept fresh, so no worker
mistakes it for the orphan of a dead worker.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from models_db.registry import Registry
from models_db.tables import JobRow
from studio.errors import StudioError
from studio.settings import Settings

logger = logging.getLogger(__name__)


def check_inline_allowed(settings: Settings) -> None:
    """Refuse ``--inline`` unless the broker is the embedded one, saying why and what to do."""
    if settings.broker_is_embedded:
        return
    broker = Settings.describe_url(settings.broker_url)
    raise StudioError(
        f"--inline needs the embedded broker, but CELERY_BROKER_URL is {broker}: with a shared broker jobs "
        "belong to the worker hosts (their devices and data directory); start `studio worker` on a worker "
        "host and wait with --wait, or unset CELERY_BROKER_URL to use the embedded broker on this machine"
    )


def inline_worker_name() -> str:
    """The name recorded on a job run inline (the pid keeps two terminals on one host apart)."""
    return f"inline@{socket.gethostname()}-{os.getpid()}"


def run_job_inline(
    job_id: int,
    registry: Registry,
    settings: Settings,
    wait: Callable[[int], JobRow],
) -> JobRow:
    """Run queued job ``job_id`` here and return it once final.

    The job runs on a thread while ``wait(job_id)`` (the CLI's usual wait, with its
    progress line) watches the registry. Ctrl-C asks a job running here to stop at
    its next step, as a cancel would, and re-raises only once it has.
    """
    from studio.device import apply_torch_threads, detect_device
    from studio.jobs.runner import WorkerIdentity, execute_job
    from studio.models.base_models import register_bundled_models

    check_inline_allowed(settings)
    apply_torch_threads(settings.torch_threads)
    register_bundled_models(registry)  # as a worker does at start: bundled base models resolve by name
    identity = WorkerIdentity(inline_worker_name(), detect_device(settings.device))
    stop_beating = threading.Event()

    def run() -> None:
        try:
            execute_job(job_id, registry, settings, identity)
        except BaseException as exc:  # the runner ends jobs itself; this is for the registry failing under it
            logger.exception("inline job %s", job_id)
            registry.finish_job(job_id, "failed", error=f"inline run stopped: {type(exc).__name__}: {exc}")

    def beat() -> None:
        while not stop_beating.wait(settings.heartbeat_seconds):
            try:
                registry.touch_jobs_of_worker(identity.name)
            except Exception as exc:  # a database hiccup must not stop the job
                logger.warning("inline heartbeat failed: %s", exc)

    runner = threading.Thread(target=run, name=f"inline-job-{job_id}")
    heart = threading.Thread(target=beat, name="inline-heartbeat", daemon=True)
    runner.start()
    heart.start()
    try:
        return wait(job_id)
    except KeyboardInterrupt:
        if runner.is_alive():  # the job runs here (a job a worker took first is left to it)
            registry.request_cancel(job_id)
            registry.add_job_log(job_id, "interrupted in the terminal that ran it inline", "warning")
        raise
    finally:
        runner.join()
        stop_beating.set()
