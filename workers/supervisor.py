"""The embedded worker: `studio run` starts one worker process, restarts it if it dies, stops it on exit."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from studio.settings import Settings

logger = logging.getLogger(__name__)


class EmbeddedWorker:
    """Supervises one `studio worker` subprocess sharing this process's settings."""

    MAX_BACKOFF_SECONDS = 30.0

    def __init__(self, settings: Settings, name: str | None = None):
        self.settings = settings
        self.name = name or f"embedded@{socket.gethostname()}"
        self.log_path: Path = settings.data_dir / "logs" / "worker.log"
        self._process: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self.restarts = 0

    def _environment(self) -> dict[str, str]:
        # The child reads the same settings through the environment (one direction of flow).
        env = dict(os.environ)
        env.update(
            STUDIO_DATA_DIR=str(self.settings.data_dir),
            DATABASE_URL=self.settings.database_url,
            CELERY_BROKER_URL=self.settings.broker_url,
            STUDIO_QUEUE=self.settings.queue_name,
            PYTHONUNBUFFERED="1",
        )
        return env

    def _spawn(self) -> subprocess.Popen:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a")  # noqa: SIM115 - handed to the child, closed with it
        cmd = [sys.executable, "-m", "studio", "worker", "--name", self.name]
        process = subprocess.Popen(
            cmd, env=self._environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        logger.info("embedded worker started (pid %s), log: %s", process.pid, self.log_path)
        return process

    def start(self) -> None:
        """Start the worker and a thread that restarts it whenever it exits unexpectedly."""
        self._process = self._spawn()
        self._monitor = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._monitor.start()

    def _watch(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            process = self._process
            if process is not None and process.poll() is not None and not self._stopping.is_set():
                logger.warning("embedded worker exited with %s; restarting in %.0f s", process.returncode, backoff)
                if self._stopping.wait(backoff):
                    return
                self._process = self._spawn()
                self.restarts += 1
                backoff = min(backoff * 2, self.MAX_BACKOFF_SECONDS)
            elif process is not None and process.poll() is None:
                backoff = max(1.0, backoff * 0.9)
            self._stopping.wait(0.5)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Ask the worker to stop; kill it after ``grace_seconds``.

        A job interrupted here is re-queued when a worker next starts and
        resumes from its last checkpoint.
        """
        self._stopping.set()
        process = self._process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
