"""Every query and commit against the registry lives in this module.

Rows are returned detached (sessions use ``expire_on_commit=False``) so callers
can read them freely; callers never hold a session.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    Integer,
    Select,
    and_,
    bindparam,
    cast,
    column,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models_db import name_search
from models_db.engine import create_registry_engine, create_session_factory
from models_db.migrate import upgrade_to_head
from models_db.tables import (
    AdapterMetricRow,
    AdapterRow,
    ArenaVoteRow,
    Base,
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
from studio.errors import ConfigurationError, NotFoundError, ValidationFailed
from studio.schema import ADAPTER_SORTS, JOB_SORTS, AdapterFilters, ArenaVote, JobFilters

ACTIVE_STATUSES = ("queued", "running")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
# Knuth's multiplicative hash, mod 2**32: where in its stratum each scatter sample point starts, so the
# sample does not alias with regular id patterns (ids of one variant every 8th, say) as a fixed stride would.
_HASH_MULTIPLIER = 2654435761
_HASH_RANGE = 2**32
# A search matching at most this many adapters is run once per view: the page, its count and the
# scatter reuse the ids; a broader one is repeated as a condition (through the index) in each query.
_SHARED_SEARCH_IDS = 2000
# Up to this many adapters in the scatter's population, reading them all beats a thousand index seeks.
_SAMPLE_IN_PYTHON_BELOW = 10_000


@dataclass(frozen=True)
class AdapterView:
    """What the Adapters tab shows at once: one page and how many match, and the scatter's sample."""

    rows: list[AdapterRow]
    total: int
    points: list[tuple[int, str, str, int, float]]  # (id, name, variant, trainable_params, value)
    population: int  # how many matching adapters have the scatter's metric


@dataclass(frozen=True)
class MetricPoint:
    """One point of a metric curve (a stored metric row, possibly picked by downsampling)."""

    step: int
    name: str
    value: float
    elapsed_seconds: float | None


def numeric_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """The metrics the adapter_metrics table holds: numbers (not booleans) under names of at most 80 characters."""
    return {
        name: float(value)
        for name, value in (metrics or {}).items()
        if isinstance(value, int | float) and not isinstance(value, bool) and len(name) <= 80
    }


def _contains_pattern(term: str) -> str:
    """A LIKE pattern (escape character ``\\``) for names containing ``term`` literally."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _search_condition(
    id_column: Any, name_column: Any, search: str | None, by_name: ColumnElement[bool] | None = None
) -> ColumnElement[bool] | None:
    """Rows whose name contains ``search`` (any case), or whose id it is ('12' or '#12').

    ``by_name`` replaces the plain name condition (an index-assisted one with the same answer).
    """
    term = (search or "").strip()
    if not term:
        return None
    conditions = [by_name if by_name is not None else name_column.ilike(_contains_pattern(term), escape="\\")]
    digits = term.removeprefix("#")
    if digits.isdigit() and len(digits) < 10:  # ids are 32-bit integers on PostgreSQL
        conditions.append(id_column == int(digits))
    return or_(*conditions)


class Registry:
    """The studio's database: one object per process, built from the settings URL."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._sessions = create_session_factory(engine)
        self._name_index_ready: bool | None = None  # SQLite: the FTS5 name index is there (checked once)

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

    # Optuna studies (sweeps) ------------------------------------------------------------

    def optuna_storage(self) -> Any:
        """An Optuna ``RDBStorage`` on this database, whose tables migration 0008 created.

        Optuna must neither create tables nor check the Alembic version table (it is ours, at our
        revision, not Optuna's): see models_db.optuna_tables. SQLite gets the registry's busy timeout,
        so a sweep's writes wait for a worker's metrics instead of failing.
        """
        import optuna

        url = self.engine.url.render_as_string(hide_password=False)
        engine_kwargs: dict[str, Any] = {}
        if self.engine.dialect.name == "sqlite":
            engine_kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            engine_kwargs["pool_pre_ping"] = True
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, skip_compatibility_check=True, skip_table_creation=True
        )

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
        """Insert a dataset row; with a ``submission_token`` already used, the row that holds it instead."""
        return self._insert_once(DatasetRow(**fields))

    def dataset_with_token(self, token: str | None) -> DatasetRow | None:
        """The dataset a form submit with this token created, if any."""
        return self._row_with_token(DatasetRow, token)

    def get_dataset(self, dataset_id: int) -> DatasetRow:
        with self._session() as s:
            row = s.get(DatasetRow, dataset_id)
            if row is None:
                raise NotFoundError(f"dataset {dataset_id} does not exist; `studio dataset list` shows the ids")
            return row

    def list_datasets(self) -> list[DatasetRow]:
        with self._session() as s:
            return list(s.scalars(select(DatasetRow).order_by(DatasetRow.id.desc())))

    def dataset_names(self, dataset_ids: Iterable[int]) -> dict[int, str]:
        """``{id: name}`` of those of ``dataset_ids`` that still exist (a deleted one is simply absent); one query."""
        ids = sorted(set(dataset_ids))
        if not ids:
            return {}
        with self._session() as s:
            return dict(s.execute(select(DatasetRow.id, DatasetRow.name).where(DatasetRow.id.in_(ids))).all())

    def delete_dataset(self, dataset_id: int) -> None:
        with self._session() as s:
            s.execute(delete(DatasetRow).where(DatasetRow.id == dataset_id))

    # Jobs ----------------------------------------------------------------------------

    def create_job(self, **fields: Any) -> JobRow:
        """Insert a queued job row (the request JSON is validated by the caller).

        With a ``submission_token`` already used, the job that holds it is returned instead.
        """
        return self._insert_once(JobRow(status="queued", **fields))

    def job_with_token(self, token: str | None) -> JobRow | None:
        """The job a form submit with this token queued, if any."""
        return self._row_with_token(JobRow, token)

    # Submission tokens ---------------------------------------------------------------

    def _row_with_token(self, table: type[DatasetRow] | type[JobRow], token: str | None) -> Any:
        if not token:
            return None
        with self._session() as s:
            return s.scalar(select(table).where(table.submission_token == token))

    def _insert_once(self, row: Any) -> Any:
        """Insert ``row``; when its submission token is taken (a repeated click that raced the first), the holder.

        The unique index decides between concurrent inserts, so this holds across threads and processes.
        """
        try:
            with self._session() as s:
                s.add(row)
                s.flush()
                return row
        except IntegrityError:
            holder = self._row_with_token(type(row), row.submission_token)
            if holder is None:
                raise
            return holder

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

    def page_jobs(
        self,
        filters: JobFilters | None = None,
        search: str | None = None,
        sort: str = "newest",
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[JobRow], int]:
        """One page of jobs, filtered by status and kind and searched by name or id in SQL, and the total."""
        filters = filters or JobFilters()
        if sort not in JOB_SORTS:
            raise ValidationFailed(f"unknown job sort {sort!r}; choose one of {', '.join(JOB_SORTS)}")

        def restrict(query: Select) -> Select:
            if filters.status:
                query = query.where(JobRow.status.in_(list(filters.status)))
            if filters.kind:
                query = query.where(JobRow.kind == filters.kind)
            matched = _search_condition(JobRow.id, JobRow.name, search)
            return query if matched is None else query.where(matched)

        order = JobRow.id.desc() if sort == "newest" else JobRow.id.asc()
        with self._session() as s:
            total = s.scalar(restrict(select(func.count(JobRow.id)))) or 0
            query = restrict(select(JobRow)).order_by(order).offset(max(0, offset)).limit(max(1, limit))
            return list(s.scalars(query)), total

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

    def metric_curves(
        self, job_id: int, names: Sequence[str] | None = None, max_points: int = 500
    ) -> list[MetricPoint]:
        """A job's metric curves for charts, at most ``max_points`` points per metric, ordered by name and step.

        A longer curve is cut into step buckets and keeps, per bucket, its lowest and its
        highest point (spikes and dips survive), plus the first and last points. Done in
        SQL through the (job, name, step, value) index, so a long curve never leaves the database.
        """
        max_points = max(4, max_points)
        out: list[MetricPoint] = []
        with self._session() as s:
            for name in sorted(set(names)) if names else _metric_names(s, job_id):
                where = (MetricRow.job_id == job_id, MetricRow.name == name)
                # Ends by index seeks and a count that stops past the budget: no scan of a long curve.
                first = s.scalar(select(MetricRow.step).where(*where).order_by(MetricRow.step).limit(1))
                if first is None:
                    continue
                last = s.scalar(select(MetricRow.step).where(*where).order_by(MetricRow.step.desc()).limit(1))
                capped = select(literal(1)).where(*where).limit(max_points + 1).subquery()
                if (s.scalar(select(func.count()).select_from(capped)) or 0) <= max_points:
                    query = select(MetricRow.step, MetricRow.value, MetricRow.elapsed_seconds).where(*where)
                    rows = s.execute(query.order_by(MetricRow.step, MetricRow.id)).all()
                else:
                    rows = _downsampled(s, job_id, name, first, last, (max_points - 2) // 2)
                out.extend(MetricPoint(int(step), name, float(value), elapsed) for step, value, elapsed in rows)
        return out

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
        """Insert an adapter and index its numeric metrics (adapter_metrics) for filtering and sorting."""
        with self._session() as s:
            row = AdapterRow(**fields)
            s.add(row)
            s.flush()
            s.add_all(
                AdapterMetricRow(adapter_id=row.id, name=name, value=value)
                for name, value in numeric_metrics(row.metrics).items()
            )
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

    def newest_adapter_named(self, name: str) -> AdapterRow | None:
        """The newest adapter called exactly ``name`` (names are not unique), or None."""
        with self._session() as s:
            query = select(AdapterRow).where(AdapterRow.name == name).order_by(AdapterRow.id.desc()).limit(1)
            return s.scalar(query)

    def update_adapter_metrics(self, adapter_id: int, metrics: dict[str, float]) -> None:
        with self._session() as s:
            row = s.get(AdapterRow, adapter_id)
            if row is None:
                raise NotFoundError(f"adapter {adapter_id} does not exist")
            row.metrics = {**(row.metrics or {}), **metrics}
            s.execute(
                delete(AdapterMetricRow).where(
                    AdapterMetricRow.adapter_id == adapter_id, AdapterMetricRow.name.in_(list(metrics))
                )
            )
            s.add_all(
                AdapterMetricRow(adapter_id=adapter_id, name=name, value=value)
                for name, value in numeric_metrics(metrics).items()
            )

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

    # Arena votes -----------------------------------------------------------------------

    def record_vote(self, vote: ArenaVote) -> ArenaVoteRow | None:
        """Store one Arena vote; None when its battle was already voted on (the unique battle id decides)."""
        try:
            with self._session() as s:
                row = ArenaVoteRow(**vote.model_dump())
                s.add(row)
                s.flush()
                return row
        except IntegrityError:
            with self._session() as s:
                if s.scalar(select(ArenaVoteRow.id).where(ArenaVoteRow.battle_id == vote.battle_id)) is None:
                    raise
            return None

    def votes_for_base(self, base_model: str) -> list[ArenaVoteRow]:
        """Every Arena vote on ``base_model``, oldest first (deleted adapters' votes included)."""
        with self._session() as s:
            query = select(ArenaVoteRow).where(ArenaVoteRow.base_model == base_model).order_by(ArenaVoteRow.id)
            return list(s.scalars(query))

    def adapter_names(self, adapter_ids: Iterable[int]) -> dict[int, str]:
        """``{id: name}`` of those of ``adapter_ids`` that still exist (a deleted one is simply absent)."""
        ids = sorted(set(adapter_ids))
        if not ids:
            return {}
        with self._session() as s:
            return dict(s.execute(select(AdapterRow.id, AdapterRow.name).where(AdapterRow.id.in_(ids))).all())

    def adapter_paths(self, adapter_ids: Iterable[int]) -> dict[int, str]:
        """``{id: directory}`` of those of ``adapter_ids`` that still exist (a deleted one is simply absent)."""
        ids = sorted(set(adapter_ids))
        if not ids:
            return {}
        with self._session() as s:
            return dict(s.execute(select(AdapterRow.id, AdapterRow.path).where(AdapterRow.id.in_(ids))).all())

    def delete_adapter(self, adapter_id: int) -> None:
        with self._session() as s:
            s.execute(delete(AdapterMetricRow).where(AdapterMetricRow.adapter_id == adapter_id))
            s.execute(delete(AdapterRow).where(AdapterRow.id == adapter_id))

    def _adapter_query(self, query: Select, filters: AdapterFilters, matched: ColumnElement[bool] | None) -> Select:
        """``query`` restricted to the adapters matching ``filters`` and the search condition ``matched``
        (joined to the metric's row)."""
        if filters.metric:
            query = query.join(
                AdapterMetricRow,
                and_(AdapterMetricRow.adapter_id == AdapterRow.id, AdapterMetricRow.name == filters.metric),
            )
        if filters.variant:
            query = query.where(AdapterRow.variant == filters.variant)
        if filters.base_model:
            query = query.where(AdapterRow.base_model == filters.base_model)
        if filters.dataset_id:
            query = query.where(AdapterRow.dataset_id == filters.dataset_id)
        return query if matched is None else query.where(matched)

    def _sqlite_name_index(self, session: Session) -> bool:
        """Whether this SQLite database has the FTS5 name index and all its sync triggers (checked once)."""
        if self._name_index_ready is None:
            names = set(
                session.scalars(
                    text("SELECT name FROM sqlite_master WHERE name IN :names").bindparams(
                        bindparam("names", expanding=True)
                    ),
                    {"names": [name_search.FTS_TABLE, *name_search.FTS_TRIGGERS]},
                )
            )
            self._name_index_ready = names == {name_search.FTS_TABLE, *name_search.FTS_TRIGGERS}
        return self._name_index_ready

    def _adapter_search(self, session: Session, search: str | None) -> ColumnElement[bool] | None:
        """The condition for adapters matching ``search`` (name contains it in any case, or it is the id).

        The plain ``ILIKE`` decides; on PostgreSQL the pg_trgm index serves it, on SQLite the FTS5
        trigram table narrows the rows first (migration 0006). When few adapters match, their ids
        are read once here and the page, its count and the scatter reuse them.
        """
        matched = _search_condition(AdapterRow.id, AdapterRow.name, search)
        if matched is None:
            return None
        term = (search or "").strip()
        if (
            self.engine.dialect.name == "sqlite"
            and len(term) >= name_search.MIN_INDEXED_TERM
            and self._sqlite_name_index(session)
        ):
            by_index = text(f"SELECT rowid FROM {name_search.FTS_TABLE} WHERE {name_search.FTS_TABLE} MATCH :phrase")
            candidates = AdapterRow.id.in_(
                by_index.bindparams(phrase=name_search.fts_phrase(term)).columns(column("rowid", Integer))
            )
            # The index folds case beyond ASCII: it only narrows; the LIKE keeps the plain query's answer.
            by_name = and_(candidates, AdapterRow.name.ilike(_contains_pattern(term), escape="\\"))
            matched = _search_condition(AdapterRow.id, AdapterRow.name, search, by_name)
        ids = list(session.scalars(select(AdapterRow.id).where(matched).limit(_SHARED_SEARCH_IDS + 1)))
        if len(ids) <= _SHARED_SEARCH_IDS:
            return AdapterRow.id.in_(ids)
        # A broad search: the plain condition, checked row by row as the queries walk their indexes (SQLite
        # would run the whole FTS query again inside every scatter seek).
        return _search_condition(AdapterRow.id, AdapterRow.name, search)

    def _count_adapters(self, session: Session, filters: AdapterFilters, matched: ColumnElement[bool] | None) -> int:
        """How many adapters match; a metric alone is counted from adapter_metrics without the join."""
        if filters.metric and matched is None and not (filters.variant or filters.base_model or filters.dataset_id):
            # Every adapter_metrics row has its adapter (deleted with it): the (name, value) index suffices.
            query = select(func.count()).select_from(AdapterMetricRow).where(AdapterMetricRow.name == filters.metric)
        else:
            query = self._adapter_query(select(func.count(AdapterRow.id)), filters, matched)
        return session.scalar(query) or 0

    def _page(
        self,
        session: Session,
        filters: AdapterFilters,
        matched: ColumnElement[bool] | None,
        sort: str,
        offset: int,
        limit: int,
        total: int | None = None,
    ) -> tuple[list[AdapterRow], int]:
        if sort not in ADAPTER_SORTS:
            raise ValidationFailed(f"unknown adapter sort {sort!r}; choose one of {', '.join(ADAPTER_SORTS)}")
        if sort.startswith("metric") and not filters.metric:
            raise ValidationFailed("sorting by a metric needs the metric: choose one in the Metric filter")
        order = {
            "newest": [AdapterRow.id.desc()],
            "oldest": [AdapterRow.id.asc()],
            "name": [AdapterRow.name.asc(), AdapterRow.id.desc()],
            "params": [AdapterRow.trainable_params.desc(), AdapterRow.id.desc()],
            "size": [AdapterRow.size_bytes.desc(), AdapterRow.id.desc()],
            "metric_asc": [AdapterMetricRow.value.asc(), AdapterRow.id.desc()],
            "metric_desc": [AdapterMetricRow.value.desc(), AdapterRow.id.desc()],
        }[sort]
        if total is None:
            total = self._count_adapters(session, filters, matched)
        query = self._adapter_query(select(AdapterRow), filters, matched).order_by(*order)
        rows = list(session.scalars(query.offset(max(0, offset)).limit(max(1, limit))))
        return rows, total

    def page_adapters(
        self,
        filters: AdapterFilters | None = None,
        search: str | None = None,
        sort: str = "newest",
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[AdapterRow], int]:
        """One page of adapters, filtered, searched and sorted in SQL, and how many match in all.

        ``sort`` is one of ADAPTER_SORTS; the metric sorts order by ``filters.metric``.
        """
        filters = filters or AdapterFilters()
        with self._session() as s:
            return self._page(s, filters, self._adapter_search(s, search), sort, offset, limit)

    def adapter_view(
        self,
        filters: AdapterFilters | None = None,
        search: str | None = None,
        sort: str = "newest",
        offset: int = 0,
        limit: int = 50,
        scatter_metric: str = "eval_loss",
        max_points: int = 1000,
    ) -> AdapterView:
        """What the Adapters tab shows at once: a page (as :meth:`page_adapters`) and the scatter sample of
        ``scatter_metric`` (as :meth:`adapter_scatter`), in one session, the search run once for both."""
        filters = filters or AdapterFilters()
        scatter_filters = filters.model_copy(update={"metric": scatter_metric})
        with self._session() as s:
            matched = self._adapter_search(s, search)
            total = population = None
            if filters == scatter_filters:  # the page's filters already ask for the metric: the same count
                total = population = self._count_adapters(s, filters, matched)
            elif not filters.metric and (matched is not None or filters.variant or filters.base_model
                                         or filters.dataset_id):  # fmt: skip
                # One pass over the matching adapters counts them and those having the metric.
                metric_row = and_(AdapterMetricRow.adapter_id == AdapterRow.id, AdapterMetricRow.name == scatter_metric)
                counts = select(func.count(AdapterRow.id), func.count(AdapterMetricRow.adapter_id))
                query = self._adapter_query(counts.outerjoin(AdapterMetricRow, metric_row), filters, matched)
                total, population = s.execute(query).one()
            rows, total = self._page(s, filters, matched, sort, offset, limit, total)
            points, population = self._scatter(s, scatter_filters, matched, max_points, population)
            return AdapterView(rows, total, points, population)

    def adapter_filter_choices(self) -> dict[str, list[Any]]:
        """Distinct variants, base models, dataset ids and metric names of all adapters.

        Each is a loose index scan (one index seek per distinct value through the (column, id)
        and (name, value) indexes), not a DISTINCT over every row.
        """
        with self._session() as s:
            return {
                "variant": _distinct_values(s, "adapters", "variant"),
                "base_model": _distinct_values(s, "adapters", "base_model"),
                "dataset_id": _distinct_values(s, "adapters", "dataset_id"),
                "metric": _distinct_values(s, "adapter_metrics", "name"),
            }

    def adapter_scatter(
        self, metric: str, filters: AdapterFilters | None = None, search: str | None = None, max_points: int = 1000
    ) -> tuple[list[tuple[int, str, str, int, float]], int]:
        """``(id, name, variant, trainable_params, value)`` of at most ``max_points`` adapters having ``metric``,
        newest first, and how many have it.

        Above ``max_points`` the points are a stratified sample over the id range: the range is cut
        into ``max_points`` equal strata and each contributes the first matching adapter at or after a
        fixed pseudo-random position inside it. That spreads the points evenly over time, does not
        alias with regular id patterns (one variant every 8th id, say), gives the same points on every
        refresh, and costs one primary-key (or filter-index) seek per point instead of reading every row.
        """
        filters = (filters or AdapterFilters()).model_copy(update={"metric": metric})
        with self._session() as s:
            return self._scatter(s, filters, self._adapter_search(s, search), max_points)

    def _scatter(
        self,
        session: Session,
        filters: AdapterFilters,
        matched: ColumnElement[bool] | None,
        max_points: int,
        population: int | None = None,
    ) -> tuple[list[tuple[int, str, str, int, float]], int]:
        if population is None:
            population = self._count_adapters(session, filters, matched)
        columns = (
            AdapterRow.id,
            AdapterRow.name,
            AdapterRow.variant,
            AdapterRow.trainable_params,
            AdapterMetricRow.value,
        )
        if population <= max_points:
            query = self._adapter_query(select(*columns), filters, matched)
            rows = session.execute(query.order_by(AdapterRow.id.desc()).limit(max_points))
            return [tuple(row) for row in rows], population
        ids = self._adapter_query(select(AdapterRow.id), filters, matched)
        if population <= _SAMPLE_IN_PYTHON_BELOW:
            # Cheaper to read the matching rows than to seek max_points times; the same sample.
            query = self._adapter_query(select(*columns), filters, matched).order_by(AdapterRow.id)
            return _stratified_sample([tuple(row) for row in session.execute(query)], max_points), population
        low = session.scalar(ids.order_by(AdapterRow.id).limit(1))
        high = session.scalar(ids.order_by(AdapterRow.id.desc()).limit(1))
        if low is None or high is None:  # deleted since they were counted
            return [], 0
        strata, target = _stratum_starts(low, high, max_points)
        # The bound goes on both sides of the metric join: planners do not carry an inequality across it.
        first_at = (
            ids.where(AdapterRow.id >= target, AdapterMetricRow.adapter_id >= target)
            .order_by(AdapterRow.id)
            .limit(1)
            .correlate(strata)
            .scalar_subquery()
        )
        # Joined on the seek, so each stratum's seek runs once and its row is read by primary key.
        query = (
            select(*columns)
            .select_from(strata)
            .join(AdapterRow, AdapterRow.id == first_at)
            .join(
                AdapterMetricRow,
                and_(AdapterMetricRow.adapter_id == AdapterRow.id, AdapterMetricRow.name == filters.metric),
            )
        )
        # Two strata may reach the same adapter (a gap in the ids): keep it once.
        points = {row[0]: tuple(row) for row in session.execute(query)}
        return [points[i] for i in sorted(points, reverse=True)], population

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

    # Bulk loading ------------------------------------------------------------------

    def bulk_insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        """Insert many rows at once: COPY on PostgreSQL, executemany on SQLite. Returns how many.

        For imports and benchmarks: values go in as given (JSON columns as JSON text),
        without the ORM's defaults or the adapter_metrics copy of adapter metrics.
        """
        if table not in Base.metadata.tables:
            raise ValidationFailed(f"unknown registry table {table!r}")
        known = set(Base.metadata.tables[table].columns.keys())
        unknown = [c for c in columns if c not in known]
        if unknown:
            raise ValidationFailed(f"table {table} has no column(s) {', '.join(unknown)}")
        names = ", ".join(columns)
        count = 0
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            if self.engine.dialect.name == "postgresql":
                with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                        count += 1
            else:
                statement = f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' for _ in columns)})"
                batch: list[Sequence[Any]] = []
                for row in rows:
                    batch.append(row)
                    if len(batch) == 50_000:
                        cursor.executemany(statement, batch)
                        count, batch = count + len(batch), []
                cursor.executemany(statement, batch)
                count += len(batch)
            cursor.close()
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
        finally:
            connection.close()
        if self.engine.dialect.name == "postgresql" and "id" in columns:
            # COPY with explicit ids leaves the id sequence behind: move it past them.
            with self.engine.begin() as conn:
                conn.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
                )
        return count

    def refresh_statistics(self) -> None:
        """Update the planner's statistics (ANALYZE; VACUUM too on PostgreSQL, for index-only scans).

        The database does this by itself over time; call it after a bulk load.
        """
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE" if conn.dialect.name == "postgresql" else "ANALYZE"))

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


# The columns whose distinct values the Adapters tab's filters offer (each has an index that starts with it).
_DISTINCT_COLUMNS = {("adapters", "variant"), ("adapters", "base_model"), ("adapters", "dataset_id"),
                     ("adapter_metrics", "name")}  # fmt: skip


def _distinct_values(session: Session, table: str, column_name: str) -> list[Any]:
    """The distinct non-null values of an indexed column, ascending, by a loose index scan.

    A recursive query seeks the smallest value, then the smallest one above it, and so on:
    one index seek per distinct value instead of reading every row as DISTINCT does.
    """
    assert (table, column_name) in _DISTINCT_COLUMNS, (table, column_name)  # names go into the SQL
    c, t = column_name, table
    query = text(
        f"""
        WITH RECURSIVE found(value) AS (
            SELECT (SELECT {c} FROM {t} WHERE {c} IS NOT NULL ORDER BY {c} LIMIT 1)
            UNION ALL
            SELECT (SELECT {c} FROM {t} WHERE {c} > found.value ORDER BY {c} LIMIT 1) FROM found
            WHERE found.value IS NOT NULL
        )
        SELECT value FROM found WHERE value IS NOT NULL
        """
    )
    return list(session.scalars(query))


def _stratum_target(low: int, span: int, strata: int, k: int) -> int:
    """Where stratum ``k`` of ``strata`` over ``low .. low + span - 1`` is sampled (as _stratum_starts does in SQL)."""
    fraction = (k * _HASH_MULTIPLIER) % _HASH_RANGE // (_HASH_RANGE >> 20)
    return low + (k * span + span * fraction // (1 << 20)) // strata


def _stratified_sample(rows: list[tuple], strata: int) -> list[tuple]:
    """The stratified sample of ``rows`` (sorted by id, their first field) that the SQL seeks pick, newest first."""
    if len(rows) <= strata:
        return rows[::-1]
    ids = [row[0] for row in rows]
    span = ids[-1] - ids[0] + 1
    picked = {bisect_left(ids, _stratum_target(ids[0], span, strata, k)) for k in range(strata)}
    return [rows[i] for i in sorted(picked, reverse=True)]


def _stratum_starts(low: int, high: int, strata: int) -> tuple[Any, ColumnElement[int]]:
    """A recursive CTE of ``strata`` rows and, per row, an id in its stratum of ``low..high``.

    Stratum k covers ``[low + k*span/strata, low + (k+1)*span/strata)``; the id sits at a fixed
    pseudo-random fraction of it (20 bits of the hash of k). Integer arithmetic in BIGINT on both
    backends (bound as BIGINT: PostgreSQL would type small Python ints as smallint and overflow).
    """

    def big(value: int) -> ColumnElement[int]:
        return cast(literal(value), BigInteger)

    span = high - low + 1
    cte = select(big(0).label("k")).cte("strata", recursive=True)
    cte = cte.union_all(select((cte.c.k + 1).label("k")).where(cte.c.k < strata - 1))
    fraction = (cte.c.k * big(_HASH_MULTIPLIER)) % big(_HASH_RANGE) // big(_HASH_RANGE >> 20)
    return cte, big(low) + (cte.c.k * big(span) + big(span) * fraction // big(1 << 20)) // big(strata)


def _metric_names(session: Session, job_id: int) -> list[str]:
    """The metric names of a job, one index seek each (DISTINCT would read every row of a long job)."""
    names: list[str] = []
    while True:
        query = select(func.min(MetricRow.name)).where(MetricRow.job_id == job_id)
        if names:
            query = query.where(MetricRow.name > names[-1])
        name = session.scalar(query)
        if name is None:
            return names
        names.append(name)


# Per step bucket, the ids of its lowest and highest row: a short ordered index scan per bucket instead
# of sorting the whole curve (window functions sort every row: 0.45 s for 125,000 rows on SQLite).
_EXTREMES_SQL = text(
    """
    WITH RECURSIVE buckets(lo) AS (  -- typed: PostgreSQL would take a small first step for a smallint
        SELECT CAST(:first AS BIGINT) UNION ALL SELECT lo + :width FROM buckets WHERE lo + :width <= :last
    )
    SELECT
        (SELECT id FROM metrics WHERE job_id = :job_id AND name = :name AND step >= lo AND step < lo + :width
         ORDER BY value, step LIMIT 1),
        (SELECT id FROM metrics WHERE job_id = :job_id AND name = :name AND step >= lo AND step < lo + :width
         ORDER BY value DESC, step LIMIT 1)
    FROM buckets
    """
)


def _downsampled(session: Session, job_id: int, name: str, first: int, last: int, buckets: int) -> list[Any]:
    """(step, value, elapsed) of the lowest and highest row of each of ``buckets`` step ranges, and of the ends."""
    width = -(-(last - first + 1) // buckets)
    params = {"job_id": job_id, "name": name, "first": first, "last": last, "width": width}
    ids = {i for pair in session.execute(_EXTREMES_SQL, params) for i in pair if i is not None}
    ends = select(MetricRow.id).where(MetricRow.job_id == job_id, MetricRow.name == name)
    ids.add(session.scalar(ends.where(MetricRow.step == first).order_by(MetricRow.id).limit(1)))
    ids.add(session.scalar(ends.where(MetricRow.step == last).order_by(MetricRow.id.desc()).limit(1)))
    query = select(MetricRow.step, MetricRow.value, MetricRow.elapsed_seconds).where(MetricRow.id.in_(ids))
    return session.execute(query.order_by(MetricRow.step, MetricRow.id)).all()


def stale_cutoff(seconds: float) -> datetime:
    """The moment before which a heartbeat counts as expired."""
    return utcnow() - timedelta(seconds=seconds)
