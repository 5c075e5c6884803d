"""The Celery app, built from settings; `celery -A workers.celery_app worker` and `studio worker` use it."""

from __future__ import annotations

from celery import Celery

from studio.settings import Settings, load_settings

TASK_RUN_JOB = "studio.run_job"


def create_celery_app(settings: Settings) -> Celery:
    """A Celery app for ``settings``: JSON only, late acks, one message at a time.

    Job state lives in the registry, not in Celery's result backend, so results
    are ignored unless CELERY_RESULT_BACKEND is set.
    """
    app = Celery("adapter_studio", broker=settings.broker_url, backend=settings.result_backend_url)
    # kombu's SQLAlchemy transport passes its options to create_engine(), so the
    # embedded broker gets none; it polls the SQLite file once a second.
    transport_options: dict = {}
    if not settings.broker_is_embedded:
        # A training job can run for hours; without this Redis re-delivers its
        # unacknowledged message after one hour. Duplicates are harmless (the
        # registry claim refuses them) but wasteful.
        transport_options["visibility_timeout"] = 12 * 3600
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        task_ignore_result=settings.result_backend_url is None,
        task_default_queue=settings.queue_name,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        include=["workers.tasks"],
    )
    app.studio_settings = settings
    return app


app = create_celery_app(load_settings())
