"""SQLAlchemy 2 table definitions of the registry.

Portable types only (no dialect-specific JSON operators), so the same code and
the same Alembic migrations behave alike on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """Timezone-aware now; stored as UTC on both backends."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timestamps in UTC on both backends; SQLite drops the zone, so it is put back on read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class BaseModelRow(Base):
    """A base model the studio can fine-tune: bundled, a local directory or a hub id."""

    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(String(20))  # bundled | local | hub
    location: Mapped[str] = mapped_column(Text)  # package/file, directory or hub id
    task: Mapped[str] = mapped_column(String(40), default="causal-lm")
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DatasetRow(Base):
    """An ingested dataset: the original file, a normalised copy and its validation report."""

    __tablename__ = "datasets"
    __table_args__ = (Index("ux_datasets_submission_token", "submission_token", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(40))
    rows: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    original_path: Mapped[str] = mapped_column(Text)
    stored_path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    mapping: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The form's one-time token: a repeated submit of the same form finds this row instead of adding another.
    submission_token: Mapped[str | None] = mapped_column(String(64), nullable=True)


class JobRow(Base):
    """A unit of work on a worker: training, merging, evaluation or a system check."""

    __tablename__ = "jobs"
    # The Jobs tab pages newest-first within a status or kind: (column, id) walks that order directly
    # and serves plain status/kind lookups too.
    __table_args__ = (
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_kind_id", "kind", "id"),
        Index("ux_jobs_submission_token", "submission_token", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    name: Mapped[str] = mapped_column(String(200), default="")
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    schema_version: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    library_versions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True)
    base_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    variant: Mapped[str | None] = mapped_column(String(60), nullable=True)
    celery_task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    worker_host: Mapped[str | None] = mapped_column(String(200), nullable=True)
    device: Mapped[str | None] = mapped_column(String(200), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    eta_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    checkpoint_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The outbox: a queued job is delivered only once a worker claims it, so these say when it
    # was last put on the broker (None: not yet, or the broker was unreachable) and how often.
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    sends: Mapped[int] = mapped_column(Integer, default=0)
    send_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The form's one-time token: a repeated submit of the same form finds this job instead of queuing another.
    submission_token: Mapped[str | None] = mapped_column(String(64), nullable=True)


class JobLogRow(Base):
    """One log line of a job, shown in the Jobs tab."""

    __tablename__ = "job_logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    level: Mapped[str] = mapped_column(String(10), default="info")
    message: Mapped[str] = mapped_column(Text)


class MetricRow(Base):
    """One scalar of a job at a step (loss, lr, grad_norm, tokens_per_s, eval_loss, ...)."""

    __tablename__ = "metrics"
    # value is in the index so a chart's per-bucket lowest/highest point is read from the index alone.
    __table_args__ = (Index("ix_metrics_job_name_step_value", "job_id", "name", "step", "value"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(80))
    value: Mapped[float] = mapped_column(Float)
    elapsed_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AdapterRow(Base):
    """A trained (or merged) adapter, stored as a standard PEFT checkpoint."""

    __tablename__ = "adapters"
    # The Adapters tab pages newest-first within a filter: (column, id) walks that order directly.
    __table_args__ = (
        Index("ix_adapters_variant_id", "variant", "id"),
        Index("ix_adapters_base_model_id", "base_model", "id"),
        Index("ix_adapters_dataset_id_id", "dataset_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    variant: Mapped[str] = mapped_column(String(60))
    base_model: Mapped[str] = mapped_column(String(200))
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True)
    ranks: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    trainable_params: Mapped[int] = mapped_column(BigInteger, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    source_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True)
    parents: Mapped[list[Any]] = mapped_column(JSON, default=list)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AdapterMetricRow(Base):
    """One numeric metric of an adapter, copied from ``AdapterRow.metrics`` by the registry.

    JSON keys cannot be listed, filtered or sorted portably (or quickly) in SQL; this
    table lets the Adapters tab list metric names with DISTINCT and filter, sort and
    sample by a metric through the (name, value) index.
    """

    __tablename__ = "adapter_metrics"
    __table_args__ = (Index("ix_adapter_metrics_name_value", "name", "value"),)

    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class EvalResultRow(Base):
    """The latest score of one model on one dataset for one metric, written by an ``eval`` job.

    Kept apart from ``AdapterRow.metrics`` (what training measured on its validation split), so an
    evaluation never overwrites a training metric. ``model_key`` names the model scored:
    ``adapter:<id>`` or ``base:<name>``; a later evaluation of the same key, dataset and metric
    replaces the earlier one.
    """

    __tablename__ = "eval_results"
    __table_args__ = (UniqueConstraint("model_key", "dataset_id", "metric", name="uq_eval_results_model_dataset"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_key: Mapped[str] = mapped_column(String(260))
    adapter_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapters.id", ondelete="CASCADE"), nullable=True, index=True
    )
    base_model: Mapped[str] = mapped_column(String(200))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    metric: Mapped[str] = mapped_column(String(80))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: not finite (a diverged model)
    examples: Mapped[int] = mapped_column(Integer, default=0)
    # Generate-and-score metrics only: answers that hit the token budget before a stop token.
    truncated: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_new_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The job that measured it, for reference only: results outlive a deleted job, so no foreign key.
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ArenaVoteRow(Base):
    """One blind Arena vote in the playground: which of two hidden replies to one prompt was better.

    ``target_a``/``target_b`` are the playground's target strings (``"base"`` or ``"adapter:<id>"``).
    No foreign key to ``adapters``: a deleted adapter's votes stay (they still say how the others
    compare with it) and the leaderboard labels it as deleted. ``battle_id`` is unique, so one
    battle is voted on at most once, even when two clicks or two processes race.
    """

    __tablename__ = "arena_votes"
    __table_args__ = (
        Index("ix_arena_votes_base_model_id", "base_model", "id"),
        Index("ux_arena_votes_battle_id", "battle_id", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    battle_id: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str] = mapped_column(String(200))
    target_a: Mapped[str] = mapped_column(String(80))
    target_b: Mapped[str] = mapped_column(String(80))
    prompt: Mapped[str] = mapped_column(Text, default="")  # truncated to ARENA_PROMPT_CHARS by the schema
    winner: Mapped[str] = mapped_column(String(4))  # a | b | tie
    voter: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RankSnapshotRow(Base):
    """Active rank of one module at one step, for the rank-allocation charts."""

    __tablename__ = "rank_snapshots"
    __table_args__ = (Index("ix_rank_snapshots_job_step", "job_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    module: Mapped[str] = mapped_column(String(300))
    rank: Mapped[int] = mapped_column(Integer)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class WorkerRow(Base):
    """A worker process and its last heartbeat; how the studio knows who is online."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(40))
    device_name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(100))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_heartbeat: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    stopped: Mapped[bool] = mapped_column(Boolean, default=False)
    current_job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
