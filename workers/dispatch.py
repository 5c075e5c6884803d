"""Sending jobs to the queue: the only place that knows jobs travel as Celery tasks."""

from __future__ import annotations

import logging

from celery import Celery

from workers.celery_app import TASK_RUN_JOB

logger = logging.getLogger(__name__)


class CeleryDispatcher:
    """Puts job ids on the studio's queue and revokes them on cancel."""

    def __init__(self, app: Celery, queue: str, supports_broadcast: bool):
        self.app = app
        self.queue = queue
        self.supports_broadcast = supports_broadcast
        self._redis = None

    def send(self, job_id: int) -> str:
        """Queue ``job_id``; returns the Celery task id."""
        result = self.app.send_task(TASK_RUN_JOB, args=[job_id], queue=self.queue)
        return result.id

    def broker_instance(self) -> str | None:
        """An id of the running broker process (Redis's ``run_id``), or None where it cannot be told.

        It changes when Redis restarts; a restart without persistence has lost every waiting
        message, so the outbox then re-sends all unclaimed jobs at once instead of waiting out
        their re-send delays.
        """
        url = str(self.app.conf.broker_url or "")
        if not url.startswith(("redis://", "rediss://")):
            return None
        try:
            import redis

            if self._redis is None:
                self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            return str(self._redis.info("server")["run_id"])
        except Exception:  # unreachable: the send path reports the reason
            return None

    def revoke(self, task_id: str | None) -> None:
        """Best effort: the registry's cancel flag is what actually stops a job.

        The embedded SQLite transport has no broadcast channel, so revoke is
        only sent over brokers that have one (Redis, AMQP).
        """
        if not task_id or not self.supports_broadcast:
            return
        try:
            self.app.control.revoke(task_id)
        except Exception as exc:  # the cancel flag still works; do not fail the user's action
            logger.warning("revoke of %s failed: %s", task_id, exc)
