"""Typed settings read from the environment: the one place URLs and paths come from.

Configuration flows one way: environment -> Settings -> factories (engine,
Celery app, UI). No other module reads os.environ for these values.
"""

from __future__ import annotations

import os
import socket
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from studio.errors import ConfigurationError

EMBEDDED_BROKER_SCHEMES = ("sqla+sqlite",)
SUPPORTED_BROKER_SCHEMES = ("redis", "rediss", "amqp", "sqla+sqlite", "sqla+postgresql", "memory")
SUPPORTED_DATABASE_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2")


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "adapter-studio"


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Everything the studio needs to know about where it runs.

    Embedded defaults (no server to install): the registry is a SQLite file and
    Celery uses kombu's SQLAlchemy transport on another SQLite file, both in the
    data directory. Setting ``DATABASE_URL=postgresql://...`` and
    ``CELERY_BROKER_URL=redis://...`` switches to the production topology.
    """

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    data_dir: Path = Field(default_factory=_default_data_dir, validation_alias=_env("STUDIO_DATA_DIR"))
    database_url_override: str | None = Field(default=None, validation_alias=_env("DATABASE_URL"))
    broker_url_override: str | None = Field(default=None, validation_alias=_env("CELERY_BROKER_URL"))
    result_backend_url: str | None = Field(
        default=None,
        validation_alias=_env("CELERY_RESULT_BACKEND"),
        description="Optional: job state lives in the registry, so Celery results are not needed.",
    )
    host: str = Field(default="127.0.0.1", validation_alias=_env("STUDIO_HOST"))
    port: int = Field(default=7860, ge=1, le=65535, validation_alias=_env("STUDIO_PORT"))
    auth: str | None = Field(
        default=None,
        validation_alias=_env("STUDIO_AUTH"),
        description="username:password, or a path to a file of such lines, to require a login.",
    )
    queue_name: str = Field(default="studio", validation_alias=_env("STUDIO_QUEUE"))
    device: str = Field(default="auto", validation_alias=_env("STUDIO_DEVICE"))
    embedded_worker: bool | None = Field(
        default=None,
        validation_alias=_env("STUDIO_EMBEDDED_WORKER"),
        description="Start a worker inside `studio run`; defaults to on for the embedded broker.",
    )
    worker_name: str = Field(default_factory=socket.gethostname, validation_alias=_env("STUDIO_WORKER_NAME"))
    heartbeat_seconds: float = Field(default=5.0, gt=0, validation_alias=_env("STUDIO_HEARTBEAT_SECONDS"))
    worker_dead_after_seconds: float = Field(default=60.0, gt=0, validation_alias=_env("STUDIO_WORKER_DEAD_AFTER"))
    no_worker_grace_seconds: float = Field(
        default=5.0,
        ge=0,
        validation_alias=_env("STUDIO_NO_WORKER_GRACE"),
        description="Seconds a CLI waits on a queued job with no worker online before saying so.",
    )
    outbox_seconds: float = Field(
        default=5.0,
        gt=0,
        validation_alias=_env("STUDIO_OUTBOX_SECONDS"),
        description="How often the web process and each worker send queued jobs the broker has not taken yet.",
    )
    resend_after_seconds: float = Field(
        default=120.0,
        gt=0,
        validation_alias=_env("STUDIO_RESEND_AFTER"),
        description="Seconds a sent job may stay unclaimed before it is sent again (doubling each time, "
        "up to an hour): a broker restarted without persistence loses its messages.",
    )
    job_max_attempts: int = Field(default=3, ge=1, validation_alias=_env("STUDIO_JOB_MAX_ATTEMPTS"))
    max_upload_mb: float = Field(default=200.0, gt=0, validation_alias=_env("STUDIO_MAX_UPLOAD_MB"))
    max_row_chars: int = Field(default=100_000, ge=100, validation_alias=_env("STUDIO_MAX_ROW_CHARS"))
    default_base_model: str = Field(default="smollm2-135m-instruct", validation_alias=_env("STUDIO_DEFAULT_BASE_MODEL"))
    eval_max_new_tokens: int = Field(
        default=1024,
        ge=1,
        le=4096,
        validation_alias=_env("STUDIO_EVAL_MAX_NEW_TOKENS"),
        description="Cap of the generation budget an evaluation sizes from its dataset's longest reference answer.",
    )
    offline: bool = Field(default=True, validation_alias=_env("STUDIO_OFFLINE"))
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        validation_alias=_env("STUDIO_TORCH_THREADS"),
        description="CPU threads per worker for torch (default: torch's, one per core). On a machine shared with "
        "other busy processes, fewer threads than cores avoid OpenMP threads waiting on each other.",
    )
    distributed_timeout_seconds: float = Field(
        default=1800.0,
        gt=0,
        validation_alias=_env("STUDIO_DISTRIBUTED_TIMEOUT"),
        description="A training job over several processes: how long a rank waits for the others in a "
        "collective (gloo/NCCL timeout) before the job fails. It must cover rank 0's validation passes and "
        "checkpoint writes, while the other ranks wait; a rank that exits is noticed within a second anyway.",
    )
    rdzv_host: str = Field(
        default="",
        validation_alias=_env("STUDIO_RDZV_HOST"),
        description="A training job over several hosts (hyper.nodes > 1): the address of the host whose worker runs "
        "node 0, as the other hosts reach it. That worker opens the rendezvous (a c10d TCPStore) on "
        "STUDIO_RDZV_HOST:STUDIO_RDZV_PORT, and `studio worker --join-distributed` on the other hosts connects "
        "there. Empty: this worker refuses jobs over several hosts.",
    )
    rdzv_port: int = Field(
        default=29400,
        ge=1,
        le=65535,
        validation_alias=_env("STUDIO_RDZV_PORT"),
        description="TCP port of the rendezvous of a job over several hosts (torchrun's c10d default, 29400).",
    )
    rdzv_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        validation_alias=_env("STUDIO_RDZV_TIMEOUT"),
        description="A job over several hosts: how long node 0 waits for the other nodes to join before the job "
        "fails with a message naming how many are missing.",
    )
    serving_slots: int = Field(
        default=8,
        ge=1,
        le=4096,
        validation_alias=_env("STUDIO_SERVING_SLOTS"),
        description="Adapters the serving engine keeps ready in its adapter banks at once (slot 0, the bare base, "
        "not counted); more adapters wait in host RAM and are paged in when a request needs them.",
    )
    serving_queue: int = Field(
        default=64,
        ge=1,
        le=100_000,
        validation_alias=_env("STUDIO_SERVING_QUEUE"),
        description="Requests that may wait to join the serving engine's running batch (per base model); "
        "beyond that a new request is refused with 'queue full' instead of waiting without end.",
    )
    api_keys: str | None = Field(
        default=None,
        validation_alias=_env("STUDIO_API_KEYS"),
        description="Comma-separated keys the OpenAI-compatible /v1 API accepts as `Authorization: Bearer <key>`; "
        "with any key set (here or in STUDIO_API_KEYS_FILE) every /v1 request needs one.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        validation_alias=_env("STUDIO_API_KEYS_FILE"),
        description="A file of /v1 API keys, one per line (blank lines and # comments skipped); "
        "added to STUDIO_API_KEYS.",
    )
    memory_budget_gb: float | None = Field(
        default=None,
        gt=0,
        validation_alias=_env("STUDIO_MEMORY_BUDGET_GB"),
        description="Memory a training job may use (GB); default: 90% of GPU memory, or half the host RAM on CPU.",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ("auto", "cpu", "cuda") and not value.startswith("cuda:"):
            raise ValueError("STUDIO_DEVICE must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator("database_url_override")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        scheme = urlsplit(value).scheme
        if scheme not in SUPPORTED_DATABASE_SCHEMES:
            raise ValueError(
                f"DATABASE_URL {value!r} is not a database URL this studio supports; "
                "use sqlite:///path/studio.db or postgresql://user@host:5432/dbname"
            )
        return _normalise_postgres_url(value)

    @field_validator("broker_url_override", "result_backend_url")
    @classmethod
    def _check_broker_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parts = urlsplit(value)
        if parts.scheme not in SUPPORTED_BROKER_SCHEMES and not parts.scheme.startswith("db+"):
            raise ValueError(
                f"CELERY_BROKER_URL {value!r} is malformed or uses an unsupported scheme; "
                "use redis://host:6379/0 (or leave it unset for the embedded broker)"
            )
        if parts.scheme.startswith("redis") and not parts.hostname:
            raise ValueError(f"CELERY_BROKER_URL {value!r} has no host; use redis://host:6379/0")
        return value

    # Derived values -----------------------------------------------------------------

    @cached_property
    def database_url(self) -> str:
        """SQLAlchemy URL of the registry."""
        return self.database_url_override or f"sqlite:///{self.data_dir / 'studio.db'}"

    @cached_property
    def broker_url(self) -> str:
        """Celery broker URL; an SQLite file in the data dir unless overridden."""
        return self.broker_url_override or f"sqla+sqlite:///{self.data_dir / 'broker.db'}"

    @property
    def broker_is_embedded(self) -> bool:
        """True when the broker needs no server (the SQLite-file transport)."""
        return self.broker_url.split("://", 1)[0] in EMBEDDED_BROKER_SCHEMES

    @property
    def start_embedded_worker(self) -> bool:
        """Whether `studio run` starts and supervises its own worker process."""
        return self.broker_is_embedded if self.embedded_worker is None else self.embedded_worker

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    def ensure_dirs(self) -> None:
        """Create the data directory tree (idempotent)."""
        for path in (self.data_dir, self.models_dir, self.datasets_dir, self.adapters_dir, self.jobs_dir):
            path.mkdir(parents=True, exist_ok=True)

    def api_key_list(self) -> list[str]:
        """The /v1 API keys of STUDIO_API_KEYS and STUDIO_API_KEYS_FILE (empty: none configured)."""
        keys = [k.strip() for k in (self.api_keys or "").split(",")]
        if self.api_keys_file is not None:
            try:
                lines = Path(self.api_keys_file).expanduser().read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigurationError(f"STUDIO_API_KEYS_FILE {self.api_keys_file} cannot be read: {exc}") from None
            keys += [line.strip() for line in lines if not line.strip().startswith("#")]
        return [k for k in dict.fromkeys(keys) if k]

    @staticmethod
    def describe_url(url: str) -> str:
        """``url`` with any password masked."""
        return _mask_password(url)

    def describe(self) -> dict[str, str]:
        """Human-readable summary with passwords masked, for `studio status` and logs."""
        return {
            "data_dir": str(self.data_dir),
            "registry": _mask_password(self.database_url),
            "broker": _mask_password(self.broker_url),
            "embedded_worker": str(self.start_embedded_worker),
            "device": self.device,
        }


def _normalise_postgres_url(url: str) -> str:
    """Use the psycopg 3 driver for plain postgresql:// URLs (it is the one installed)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def _mask_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


def load_settings(**overrides) -> Settings:
    """Read settings from the environment, turning validation errors into one clear line."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        message = str(first.get("msg", exc)).removeprefix("Value error, ")
        raise ConfigurationError(f"invalid setting {field}: {message}") from None
