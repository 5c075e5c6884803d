"""Health of the installation: registry, broker, workers online and their devices."""

from __future__ import annotations

from dataclasses import dataclass, field

from models_db.registry import Registry, stale_cutoff
from studio.errors import ConfigurationError
from studio.settings import Settings


@dataclass
class WorkerStatus:
    name: str
    device: str
    device_name: str
    current_job_id: int | None
    seconds_since_heartbeat: float


@dataclass
class SystemStatus:
    registry_url: str
    registry_ok: bool
    broker_url: str
    broker_ok: bool
    broker_error: str | None
    workers: list[WorkerStatus] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return self.registry_ok and self.broker_ok and bool(self.workers)


def check_broker(url: str, timeout: float = 3.0) -> None:
    """Raise a one-line ConfigurationError if the Celery broker at ``url`` cannot be reached."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        shown = Settings.describe_url(url)
        raise ConfigurationError(f"cannot reach the Celery broker {shown}: {reason}") from None


def online_workers(registry: Registry, settings: Settings) -> list[WorkerStatus]:
    """Workers whose heartbeat is fresher than the dead-after limit."""
    from models_db.tables import utcnow

    now = utcnow()
    rows = registry.online_workers(stale_cutoff(settings.worker_dead_after_seconds))
    return [
        WorkerStatus(r.name, r.device, r.device_name, r.current_job_id, (now - r.last_heartbeat).total_seconds())
        for r in rows
    ]


def workers_serving_queue(registry: Registry, settings: Settings) -> int:
    """How many live workers consume this studio's queue (what a queued job needs to ever start)."""
    rows = registry.online_workers(stale_cutoff(settings.worker_dead_after_seconds))
    return sum(1 for r in rows if r.queue == settings.queue_name)


def system_status(registry: Registry, settings: Settings) -> SystemStatus:
    """Check every moving part; never raises for an unreachable service, reports it instead."""
    described = settings.describe()
    status = SystemStatus(described["registry"], False, described["broker"], False, None)
    try:
        registry.check_connection()
        status.registry_ok = True
        status.counts = registry.counts()
        status.workers = online_workers(registry, settings)
    except ConfigurationError:
        status.registry_ok = False
    try:
        check_broker(settings.broker_url)
        status.broker_ok = True
    except ConfigurationError as exc:
        status.broker_error = str(exc)
    return status
