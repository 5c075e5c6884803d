"""The worker process's own state: identity, device, heartbeats and crash recovery.

Hooked to Celery's worker signals, so it works the same for `studio worker`
and for a plain `celery -A workers.celery_app worker`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import signals

from models_db.registry import Registry
from studio.device import apply_torch_threads, detect_device
from studio.jobs.outbox import OutboxLoop, send_job
from studio.jobs.recovery import recover_orphaned_jobs
from studio.jobs.runner import WorkerIdentity, execute_job
from studio.models.base_models import register_bundled_models
from studio.settings import Settings
from workers.celery_app import app
from workers.dispatch import CeleryDispatcher

logger = logging.getLogger(__name__)
_RUNTIME: WorkerRuntime | None = None
_LOCK = threading.Lock()


class WorkerRuntime:
    """One per worker process: runs jobs and keeps the registry informed that it is alive."""

    RECOVERY_EVERY_BEATS = 6

    def __init__(self, settings: Settings, name: str):
        self.settings = settings
        self.name = name
        self.registry = Registry.from_url(settings.database_url)
        self.device = detect_device(settings.device)
        self.torch_threads = apply_torch_threads(settings.torch_threads)
        self.identity = WorkerIdentity(name, self.device)
        self.dispatcher = CeleryDispatcher(app, settings.queue_name, not settings.broker_is_embedded)
        self.outbox = OutboxLoop(self.registry, self.dispatcher, settings.outbox_seconds, settings.resend_after_seconds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _worker_fields(self) -> dict:
        return dict(
            hostname=socket.gethostname(),
            pid=os.getpid(),
            device=self.device.torch_device,
            device_name=self.device.name,
            queue=self.settings.queue_name,
        )

    def start(self) -> None:
        """Announce this worker, recover jobs its previous incarnation left running, start beating."""
        self.registry.worker_started(self.name, **self._worker_fields())
        register_bundled_models(self.registry)
        recovered = recover_orphaned_jobs(self.registry, self.settings, self._send, dead_workers=[self.name])
        if recovered:
            logger.warning("recovered jobs left by a previous run of %s: %s", self.name, recovered)
        self._thread = threading.Thread(target=self._beat, name="studio-heartbeat", daemon=True)
        self._thread.start()
        # Every worker also sends queued jobs the broker has not taken (or has lost): with
        # several of them a job still gets one send per round (the registry arbitrates).
        self.outbox.start()
        logger.info("worker %s online on %s (%d torch CPU threads)", self.name, self.device.label, self.torch_threads)

    def _beat(self) -> None:
        beats = 0
        while not self._stop.wait(self.settings.heartbeat_seconds):
            beats += 1
            try:
                self.registry.worker_heartbeat(self.name, **self._worker_fields())
                self.registry.touch_jobs_of_worker(self.name)
                if beats % self.RECOVERY_EVERY_BEATS == 0:
                    recover_orphaned_jobs(self.registry, self.settings, self._send)
            except Exception as exc:  # a database hiccup must not kill the heartbeat thread
                logger.warning("heartbeat failed: %s", exc)

    def _send(self, job_id: int) -> None:
        """Send a re-queued job; if the broker is down the outbox loop sends it later."""
        send_job(self.registry, self.dispatcher, job_id, seen_sends=0)

    def stop(self) -> None:
        """Mark this worker offline (a clean shutdown)."""
        self._stop.set()
        self.outbox.stop()
        try:
            self.registry.worker_stopped(self.name)
        except Exception as exc:
            logger.warning("could not mark worker stopped: %s", exc)

    def run(self, job_id: int) -> str:
        return execute_job(job_id, self.registry, self.settings, self.identity)


def worker_runtime() -> WorkerRuntime:
    """The runtime of this process, created on first use when signals did not run (eager mode)."""
    global _RUNTIME
    with _LOCK:
        if _RUNTIME is None:
            _RUNTIME = WorkerRuntime(app.studio_settings, f"celery@{socket.gethostname()}")
            _RUNTIME.start()
        return _RUNTIME


@signals.worker_ready.connect
def _on_worker_ready(sender=None, **_kwargs) -> None:
    global _RUNTIME
    name = getattr(sender, "hostname", None) or f"celery@{socket.gethostname()}"
    with _LOCK:
        if _RUNTIME is None:
            _RUNTIME = WorkerRuntime(app.studio_settings, name)
            _RUNTIME.start()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_kwargs) -> None:
    if _RUNTIME is not None:
        _RUNTIME.stop()
