"""Waiting on a job: notice when a queued job has no worker online to ever pick it up.

A CLI that waits on such a job would otherwise show "queued" and a 0 % bar forever.
The watch is plain logic (a worker counter and a clock are passed in) so it is
testable without a broker or a real worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from studio.settings import Settings


def no_worker_message(settings: Settings, can_inline: bool) -> str:
    """What to tell a user whose queued job has no worker: how to start one, where that applies."""
    if settings.broker_is_embedded:
        inline = ", or rerun with --inline to run the job in this process" if can_inline else ""
        return (
            "no worker is online: start one with `studio worker` in another terminal "
            f"(or use `studio run`, which starts one){inline}; still waiting"
        )
    broker = Settings.describe_url(settings.broker_url)
    return (
        f"no worker is online for queue {settings.queue_name!r} on {broker}: start `studio worker` on a worker "
        "host (same DATABASE_URL and CELERY_BROKER_URL); still waiting"
    )


class NoWorkerWatch:
    """Says once that a queued job has no live worker, after a grace period; again if workers vanish later.

    A worker may come up at any time, so this only informs: the caller keeps waiting.
    The grace period spares the message when a worker is merely starting.
    """

    def __init__(
        self,
        count_workers: Callable[[], int],
        grace_seconds: float,
        message: str,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._count_workers = count_workers
        self._grace = grace_seconds
        self._message = message
        self._clock = clock
        self._alone_since: float | None = None  # when the job was first seen queued with no worker
        self._told = False

    def check(self, job) -> str | None:
        """The message to print now for ``job`` (a JobRow), or None."""
        if job.status != "queued" or self._count_workers() > 0:
            # Someone runs it or could: forget, so that a later disappearance is told again.
            self._alone_since, self._told = None, False
            return None
        now = self._clock()
        if self._alone_since is None:
            self._alone_since = now
        if self._told or now - self._alone_since < self._grace:
            return None
        self._told = True
        return self._message
