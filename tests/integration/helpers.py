"""Helpers of the integration tests: topologies, worker subprocesses, polling."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from studio.services.container import Services, build_services
from studio.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/15"
HEARTBEAT_SECONDS = "0.5"
DEAD_AFTER_SECONDS = "3"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str | Callable[[], str], interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_environment(**values: str) -> dict[str, str]:
    """This process's environment without any studio setting of the caller, plus ``values``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STUDIO_", "CELERY_")) and k not in ("DATABASE_URL", "PYTEST_CURRENT_TEST")
    }
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False")
    env.update(values)
    return env


def run_studio(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m studio ARGS` to completion, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "studio", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the process group of ``process`` (started with start_new_session) and reap it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


# Topologies ---------------------------------------------------------------------------


@dataclass
class Topology:
    """Where one test's studio lives; hands out Settings and the environment of its subprocesses."""

    name: str
    data_dir: Path
    database_url: str
    broker_url: str
    queue: str
    models_dir: Path
    _services: Services | None = None

    def settings(self) -> Settings:
        return Settings(
            data_dir=self.data_dir,
            database_url_override=self.database_url,
            broker_url_override=self.broker_url,
            queue_name=self.queue,
            heartbeat_seconds=float(HEARTBEAT_SECONDS),
            worker_dead_after_seconds=float(DEAD_AFTER_SECONDS),
        )

    def env(self, **extra: str) -> dict[str, str]:
        return clean_environment(
            STUDIO_DATA_DIR=str(self.data_dir),
            DATABASE_URL=self.database_url,
            CELERY_BROKER_URL=self.broker_url,
            STUDIO_QUEUE=self.queue,
            STUDIO_HEARTBEAT_SECONDS=HEARTBEAT_SECONDS,
            STUDIO_WORKER_DEAD_AFTER=DEAD_AFTER_SECONDS,
            STUDIO_MODELS_DIR=str(self.models_dir),
            **extra,
        )

    def services(self) -> Services:
        """The services a web process would use: the test submits, cancels and reads through them."""
        if self._services is None:
            self._services = build_services(self.settings())
        return self._services

    def close(self) -> None:
        if self._services is not None:
            self._services.jobs.dispatcher.app.close()
            self._services.registry.dispose()


# Workers ------------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A real `studio worker` subprocess (Celery, solo pool) in its own process group."""

    name: str  # as recorded in the registry: "studio@<--name>"
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, not a shutdown."""
        kill_group(self.process, signal.SIGKILL)


# A broker of the test's own -------------------------------------------------------------


@dataclass
class RedisServer:
    """A private `redis-server` without persistence: stopping it loses every message, like a crash."""

    port: int
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> None:
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
                + ["--save", "", "--appendonly", "no", "--daemonize", "no"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._answers, timeout, lambda: f"redis-server on port {self.port}; its log:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None:
            kill_group(self.process, signal.SIGKILL)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def queue_length(self, queue: str) -> int:
        import redis

        with redis.Redis(port=self.port, socket_timeout=5) as client:
            return int(client.llen(queue))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def _answers(self) -> bool:
        import redis

        if self.process is not None and self.process.poll() is not None:
            pytest.fail(f"redis-server exited with {self.process.returncode}:\n{self.log()}")
        try:
            with redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False
