"""Helpers of the /v1 API tests: services on the test registry and a real uvicorn server in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator


class NoQueue:
    """Stands in for Celery: the API tests queue no jobs."""

    def send(self, job_id: int) -> str:
        return f"task-{job_id}"

    def revoke(self, task_id) -> None:
        pass


def make_services(settings, registry):
    from studio.services.container import Services
    from studio.services.jobs import JobService

    return Services(settings=settings, registry=registry, jobs=JobService(registry, NoQueue()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yield its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
