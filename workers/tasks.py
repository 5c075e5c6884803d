"""Celery tasks: a job id in, a plain function called. Nothing else belongs here."""

from __future__ import annotations

from workers.celery_app import TASK_RUN_JOB, app
from workers.runtime import worker_runtime


@app.task(name=TASK_RUN_JOB, acks_late=True)
def run_job(job_id: int) -> str:
    """Run registry job ``job_id`` on this worker; returns its final status."""
    return worker_runtime().run(job_id)
