"""Every query and commit against the registry lives in this module.

Rows are returned detached (sessions use ``expire_on_commit=False``) so callers
can read them freely; callers never hold a session.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, select, text, update
from sqlalchemy.orm import Session

from models_db.engine import create_registry_engine, create_session_factory
from models_db.migrate import upgrade_to_head
from models_db.tables import (
    AdapterRow,
    BaseModelRow,
    DatasetRow,
    EvalResultRow,
    JobLogRow,
    JobRow,
    MetricRow,
    RankSnapshotRow,
    WorkerRow,
    utcnow,
)
from studio.errors import ConfigurationError, NotFoundError

ACTIVE_STATUSES = ("queued", "running")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


class Registry:
    """The studio's database: one object per process, built from the settings URL."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._sessions = create_session_factory(engine)

    @classmethod
    def from_url(cls, url: str, migrate: bool = True) -> Registry:
        """Connect to ``url`` (and bring its schema to head unless ``migrate`` is False)."""
        registry = cls(create_registry_engine(url))
        registry.check_connection()
        if migrate:
            upgrade_to_head(registry.engine)
        return registry

    @contextmanager
    def _session(self) -> Iterator[Session]:
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def check_connection(self) -> None:
        """Raise a one-line ConfigurationError if the database cannot be reached."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            url = self.engine.url.render_as_string(hide_password=True)
            reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            raise ConfigurationError(f"cannot reach the registry database {url}: {reason}") from None

    def dispose(self) -> None:
        self.engine.dispose()

    # Base models ---------------------------------------------------------------------

    def upsert_base_model(
        self, name: str, source: str, location: str, task: str, description: str = ""
    ) -> BaseModelRow:
        """Insert or update a base model entry by name."""
        with self._session() as s:
            row = s.scalar(select(BaseModelRow).where(BaseModelRow.name == name))
            if row is None:
                row = BaseModelRow(name=name, source=source, location=location, task=task, description=description)
                s.add(row)
            else:
                row.source, row.location, row.task, row.description = source, location, task, description
            s.flush()
            return row

    def list_base_models(self) -> list[BaseModelRow]:
        with self._session() as s:
            return list(s.scalars(select(BaseModelRow).order_by(BaseModelRow.id)))

    # Datasets ------------------------------------------------------------------------

    def add_dataset(self, **fields: Any) -> DatasetRow:
        with self._session() as s:
            row = DatasetRow(**fields)
            s.add(row)
            s.flush()
            return row

    def get_dataset(self, dataset_id: int) -> DatasetRow:
        with self._session() as s:
            row = s.get(DatasetRow, dataset_id)
            if row is None:
                raise NotFoundError(f"dataset {dataset_id} does not exist; `studio dataset list` shows the ids")
            return row

    def list_datasets(self) -> list[DatasetRow]:
        with self._session() as s:
            return list(s.scalars(select(DatasetRow).order_by(DatasetRow.id.desc())))

    def delete_dataset(self, dataset_id: int) -> None:
        with self._session() as s:
            s.execute(delete(DatasetRow).where(DatasetRow.id == dataset_id))

    # Jobs ----------------------------------------------------------------------------

    def create_job(self, **fields: Any) -> JobRow:
        """Insert a queued job row (the request JSON is validated by the caller)."""
        with self._session() as s:
            row = JobRow(status="queued", **fields)
            s.add(row)
            s.flush()
            return row

    def get_job(self, job_id: int) -> JobRow:
        with self._session() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise NotFoundError(f"job {job_id} does not exist; `studio jobs` lists them")
            return row

    def list_jobs(self, status: Sequence[str] | None = None, kind: str | None = None, limit: int = 200) -> list[JobRow]:
        with self._session() as s:
            query = select(JobRow).order_by(JobRow.id.desc()).limit(limit)
            if status:
                query = query.where(JobRow.status.in_(list(status)))
            if kind:
                query = query.where(JobRow.kind == kind)
            return list(s.scalars(query))

    def jobs_awaiting_delivery(self) -> list[JobRow]:
        """Queued jobs no worker has claimed and nobody cancelled: what the outbox may (re-)send."""
        with self._session() as s:
            query = select(JobRow).where(JobRow.status == "queued", JobRow.cancel_requested.is_(False))
            return list(s.scalars(query.order_by(JobRow.id)))

    def mark_job_sending(self, job_id: int, seen_sends: int) -> bool:
        """Take the right to send job ``job_id`` to the broker now; True if this caller got it.

        ``seen_sends`` is the job's ``sends`` as the caller read it: when several
        dispatchers (the web process, every worker) see the same job due, only
        the first one's update matches, so a job is not sent twice per round.
        A job that was claimed or cancelled meanwhile is never sent.
        """
        with self._session() as s:
            result = s.execute(
                update(JobRow)
                .where(
                    JobRow.id == job_id,
                    JobRow.status == "queued",
                    JobRow.cancel_requested.is_(False),
                    JobRow.sends == seen_sends,
                )
                .values(sent_at=utcnow(), sends=seen_sends + 1)
            )
            return result.rowcount == 1

    def record_job_sent(self, job_id: int, task_id: str) -> None:
        """The broker took the job's message (delivery still means a worker claims it)."""
        with self._session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(celery_task_id=task_id, send_error=None))

    def record_job_unsent(self, job_id: int, sends: int, error: str) -> None:
        """Undo :meth:`mark_job_sending` after the broker refused the message, keeping why."""
        with self._session() as s:
            s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.sends == sends)
                .values(sent_at=None, sends=sends - 1, send_error=error)
            )

    def claim_job(self, job_id: int, worker: str, device: str, library_versions: dict[str, str]) -> bool:
        """Atomically move a queued job to running for ``worker``.

        Returns False when the job is not queued any more (cancelled, finished,
        or already claimed by a duplicate delivery), in which case the caller
        must not run it. This is what makes redelivered messages harmless.
        """
        now = utcnow()
        with self._session() as s:
            result = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == "queued", JobRow.cancel_requested.is_(False))
                .values(
                    status="running",
                    worker_host=worker,
                    device=device,
                    library_versions=library_versions,
                    attempts=JobRow.attempts + 1,
                    started_at=now,
                    heartbeat_at=now,
                    error=None,
                )
            )
            return result.rowcount == 1

    def update_job_progress(
        self,
        job_id: int,
        *,
        step: int,
        total_steps: int | None,
        progress: float,
        eta_seconds: float | None,
        message: str | None = None,
    ) -> None:
        values: dict[str, Any] = dict(
            step=step, total_steps=total_steps, progress=progress, eta_seconds=eta_seconds, heartbeat_at=utcnow()
        )
        if message is not None:
            values["message"] = message
        with self._session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(**values))

    def set_job_checkpoint(self, job_id: int, path: str | None) -> None:
        with self._session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(checkpoint_path=path))

    def finish_job(self, job_id: int, status: str, error: str | None = None, result: dict | None = None) -> None:
        """Record a job's final status; only a running or queued job can finish."""
        assert status in FINAL_STATUSES, status
        values: dict[str, Any] = dict(status=status, finished_at=utcnow(), error=error, eta_seconds=None)
        if status == "succeeded":
            values["progress"] = 1.0
        if result is not None:
            values["result"] = result
        with self._session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status.in_(ACTIVE_STATUSES)).values(**values))

    def request_cancel(self, job_id: int) -> str:
        """Flag a job for cancellation; a queued job is cancelled at once. Returns the new status."""
        with self._session() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise NotFoundError(f"job {job_id} does not exist")
            if row.status in FINAL_STATUSES:
                return row.status
            row.cancel_requested = True
            if row.status == "queued":
                row.status, row.finished_at = "cancelled", utcnow()
            return row.status

    def is_cancel_requested(self, job_id: int) -> bool:
        with self._session() as s:
            return bool(s.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id)))

    def requeue_job(self, job_id: int, reason: str) -> bool:
        """Put a running job back in the queue (its worker died); True if it was running."""
        with self._session() as s:
            result = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == "running")
                .values(
                    status="queued",
                    worker_host=None,
                    message=reason,
                    heartbeat_at=None,
                    # Its old message was consumed: the outbox sends it afresh.
                    sent_at=None,
                    sends=0,
                    send_error=None,
                )
            )
            return result.rowcount == 1

    def orphaned_jobs(self, dead_workers: Iterable[str], stale_before: datetime) -> list[JobRow]:
        """Running jobs whose worker is known dead or whose heartbeat is older than ``stale_before``."""
        dead = list(dead_workers)
        with self._session() as s:
            query = select(JobRow).where(JobRow.status == "running")
            rows = list(s.scalars(query))
        return [r for r in rows if r.worker_host in dead or r.heartbeat_at is None or r.heartbeat_at < stale_before]

    def touch_jobs_of_worker(self, worker: str) -> None:
        """Refresh the heartbeat of every job a live worker is running."""
        with self._session() as s:
            s.execute(
                update(JobRow)
                .where(JobRow.worker_host == worker, JobRow.status == "running")
                .values(heartbeat_at=utcnow())
            )

    def delete_job(self, job_id: int) -> None:
        with self._session() as s:
            s.execute(delete(JobRow).where(JobRow.id == job_id))

    # Logs ----------------------------------------------------------------------------

    def add_job_log(self, job_id: int, message: str, level: str = "info") -> None:
        with self._session() as s:
            s.add(JobLogRow(job_id=job_id, message=message, level=level))

    def job_logs(self, job_id: int, limit: int = 500) -> list[JobLogRow]:
        with self._session() as s:
            query = select(JobLogRow).where(JobLogRow.job_id == job_id).order_by(JobLogRow.id.desc()).limit(limit)
            return list(reversed(list(s.scalars(query))))

    # Metrics -------------------------------------------------------------------------

    def add_metrics(
        self, job_id: int, step: int, values: dict[str, float], elapsed_seconds: float | None = None
    ) -> None:
        with self._session() as s:
            s.add_all(
                MetricRow(job_id=job_id, step=step, name=name, value=float(value), elapsed_seconds=elapsed_seconds)
                for name, value in values.items()
            )

    def metrics(self, job_id: int, names: Sequence[str] | None = None) -> list[MetricRow]:
        with self._session() as s:
            query = select(MetricRow).where(MetricRow.job_id == job_id).order_by(MetricRow.step, MetricRow.id)
            if names:
                query = query.where(MetricRow.name.in_(list(names)))
            return list(s.scalars(query))

    def delete_metrics_after(self, job_id: int, step: int) -> None:
        """Drop metrics past ``step`` (a resumed job re-reports them from its checkpoint)."""
        with self._session() as s:
            s.execute(delete(MetricRow).where(MetricRow.job_id == job_id, MetricRow.step > step))
            s.execute(delete(RankSnapshotRow).where(RankSnapshotRow.job_id == job_id, RankSnapshotRow.step > step))

    # Rank snapshots ------------------------------------------------------------------

    def add_rank_snapshots(
        self, job_id: int, step: int, ranks: dict[str, int], extra: dict[str, dict] | None = None
    ) -> None:
        extra = extra or {}
        with self._session() as s:
            s.add_all(
                RankSnapshotRow(job_id=job_id, step=step, module=module, rank=int(rank), extra=extra.get(module, {}))
                for module, rank in ranks.items()
            )

    def rank_snapshots(self, job_id: int) -> list[RankSnapshotRow]:
        with self._session() as s:
            query = select(RankSnapshotRow).where(RankSnapshotRow.job_id == job_id)
            return list(s.scalars(query.order_by(RankSnapshotRow.step, RankSnapshotRow.id)))

    # Adapters ------------------------------------------------------------------------

    def add_adapter(self, **fields: Any) -> AdapterRow:
        with self._session() as s:
            row = AdapterRow(**fields)
            s.add(row)
            s.flush()
            return row

    def get_adapter(self, adapter_id: int) -> AdapterRow:
        with self._session() as s:
            row = s.get(AdapterRow, adapter_id)
            if row is None:
                raise NotFoundError(f"adapter {adapter_id} does not exist; `studio adapters` lists them")
            return row

    def list_adapters(self, variant: str | None = None, base_model: str | None = None) -> list[AdapterRow]:
        with self._session() as s:
            query = select(AdapterRow).order_by(AdapterRow.id.desc())
            if variant:
                query = query.where(AdapterRow.variant == variant)
            if base_model:
                query = query.where(AdapterRow.base_model == base_model)
            return list(s.scalars(query))

    def update_adapter_metrics(self, adapter_id: int, metrics: dict[str, float]) -> None:
        with self._session() as s:
            row = s.get(AdapterRow, adapter_id)
            if row is None:
                raise NotFoundError(f"adapter {adapter_id} does not exist")
            row.metrics = {**(row.metrics or {}), **metrics}

    # Evaluation results ----------------------------------------------------------------

    def record_eval_results(
        self,
        *,
        model_key: str,
        adapter_id: int | None,
        base_model: str,
        dataset_id: int,
        values: dict[str, float | None],
        examples: int,
        truncated: dict[str, int] | None = None,
        max_new_tokens: int | None = None,
        job_id: int | None = None,
    ) -> None:
        """Store one model's scores on a dataset, replacing earlier ones of the same (model, dataset, metric).

        ``truncated`` gives, per generate-and-score metric, how many answers hit the token budget.
        """
        truncated = truncated or {}
        with self._session() as s:
            s.execute(
                delete(EvalResultRow).where(
                    EvalResultRow.model_key == model_key,
                    EvalResultRow.dataset_id == dataset_id,
                    EvalResultRow.metric.in_(list(values)),
                )
            )
            s.add_all(
                EvalResultRow(
                    model_key=model_key,
                    adapter_id=adapter_id,
                    base_model=base_model,
                    dataset_id=dataset_id,
                    metric=metric,
                    value=value,
                    examples=examples,
                    truncated=truncated.get(metric),
                    max_new_tokens=max_new_tokens if metric in truncated else None,
                    job_id=job_id,
                )
                for metric, value in values.items()
            )

    def eval_results(
        self, adapter_id: int | None = None, dataset_id: int | None = None, model_key: str | None = None
    ) -> list[EvalResultRow]:
        """Stored evaluation scores, by dataset then model then metric, optionally filtered."""
        with self._session() as s:
            query = select(EvalResultRow).order_by(
                EvalResultRow.dataset_id, EvalResultRow.model_key, EvalResultRow.metric
            )
            if adapter_id is not None:
                query = query.where(EvalResultRow.adapter_id == adapter_id)
            if dataset_id is not None:
                query = query.where(EvalResultRow.dataset_id == dataset_id)
            if model_key is not None:
                query = query.where(EvalResultRow.model_key == model_key)
            return list(s.scalars(query))

    def delete_adapter(self, adapter_id: int) -> None:
        with self._session() as s:
            s.execute(delete(AdapterRow).where(AdapterRow.id == adapter_id))

    # Workers -------------------------------------------------------------------------

    def worker_heartbeat(self, name: str, **fields: Any) -> None:
        """Insert or refresh a worker's row; marks it online."""
        now = utcnow()
        with self._session() as s:
            row = s.get(WorkerRow, name)
            if row is None:
                s.add(WorkerRow(name=name, started_at=now, last_heartbeat=now, stopped=False, **fields))
            else:
                for key, value in fields.items():
                    setattr(row, key, value)
                row.last_heartbeat, row.stopped = now, False

    def worker_started(self, name: str, **fields: Any) -> None:
        """Record a (re)start: resets started_at so jobs of the previous incarnation can be found."""
        now = utcnow()
        with self._session() as s:
            row = s.get(WorkerRow, name)
            if row is None:
                s.add(WorkerRow(name=name, started_at=now, last_heartbeat=now, stopped=False, **fields))
            else:
                for key, value in fields.items():
                    setattr(row, key, value)
                row.started_at, row.last_heartbeat, row.stopped = now, now, False

    def worker_stopped(self, name: str) -> None:
        with self._session() as s:
            s.execute(update(WorkerRow).where(WorkerRow.name == name).values(stopped=True, current_job_id=None))

    def set_worker_job(self, name: str, job_id: int | None) -> None:
        with self._session() as s:
            s.execute(update(WorkerRow).where(WorkerRow.name == name).values(current_job_id=job_id))

    def list_workers(self) -> list[WorkerRow]:
        with self._session() as s:
            return list(s.scalars(select(WorkerRow).order_by(WorkerRow.name)))

    def online_workers(self, alive_after: datetime) -> list[WorkerRow]:
        with self._session() as s:
            query = select(WorkerRow).where(WorkerRow.stopped.is_(False), WorkerRow.last_heartbeat >= alive_after)
            return list(s.scalars(query.order_by(WorkerRow.name)))

    # Summaries -----------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Row counts per table and jobs per status, for `studio status`."""
        with self._session() as s:
            out = {
                "datasets": s.scalar(select(func.count()).select_from(DatasetRow)) or 0,
                "adapters": s.scalar(select(func.count()).select_from(AdapterRow)) or 0,
            }
            for status, count in s.execute(select(JobRow.status, func.count()).group_by(JobRow.status)):
                out[f"jobs_{status}"] = count
            return out


def stale_cutoff(seconds: float) -> datetime:
    """The moment before which a heartbeat counts as expired."""
    return utcnow() - timedelta(seconds=seconds)
