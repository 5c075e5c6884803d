"""Progress reporters: how a plain job function tells the world what it is doing.

Job functions (training, evaluation, merging, the system check) receive a
``Reporter`` and never know whether it writes to the registry (on a worker) or
to memory (in tests, benchmarks and scripts). This is the celery-progress
pattern: the function is testable without a broker.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from studio.errors import JobCancelled


class Reporter(ABC):
    """What a running job may report. Every method is cheap enough to call each step."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._first_step: int | None = None
        self._first_step_time: float | None = None

    @property
    def elapsed(self) -> float:
        """Seconds since the reporter was created (the job started or resumed)."""
        return time.monotonic() - self._started

    def eta(self, step: int, total: int | None) -> float | None:
        """Seconds left, from the pace since the first reported step of this run."""
        now = time.monotonic()
        if self._first_step is None:
            self._first_step, self._first_step_time = step, now
            return None
        done = step - self._first_step
        if not total or done <= 0:
            return None
        if step >= total:
            # Past the last step the pace says 0 s, while what is left (saving, a transfer kit that trains
            # for minutes) is not paced by steps: unknown, for the job page, the API and the CLI alike.
            return None
        rate = (now - self._first_step_time) / done
        return max(0.0, rate * (total - step))

    @abstractmethod
    def log(self, message: str, level: str = "info") -> None:
        """A line for the job's log."""

    @abstractmethod
    def progress(self, step: int, total: int | None = None, message: str | None = None) -> None:
        """Where the job is: step out of total (ETA is derived here)."""

    @abstractmethod
    def metrics(self, step: int, values: dict[str, float]) -> None:
        """Scalars at a step: loss, learning_rate, grad_norm, tokens_per_s, eval_loss, ..."""

    @abstractmethod
    def ranks(self, step: int, ranks: dict[str, int], extra: dict[str, dict[str, Any]] | None = None) -> None:
        """Active rank per module at a step, for variants whose allocation changes."""

    @abstractmethod
    def checkpoint(self, path: str, step: int) -> None:
        """A resumable checkpoint was written at ``path``."""

    @abstractmethod
    def is_cancelled(self) -> bool:
        """True once cancellation was requested."""

    def check_cancelled(self) -> None:
        """Raise JobCancelled if cancellation was requested; call between steps."""
        if self.is_cancelled():
            raise JobCancelled()


@dataclass
class MemoryReporter(Reporter):
    """Keeps everything in lists; optionally echoes to stdout. For tests, scripts and benchmarks."""

    echo: bool = False
    logs: list[tuple[str, str]] = field(default_factory=list)
    steps: list[tuple[int, int | None, str | None]] = field(default_factory=list)
    metric_rows: list[tuple[int, str, float]] = field(default_factory=list)
    rank_rows: list[tuple[int, str, int]] = field(default_factory=list)
    rank_extras: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    checkpoints: list[tuple[str, int]] = field(default_factory=list)
    cancel_event: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        Reporter.__init__(self)

    def log(self, message: str, level: str = "info") -> None:
        self.logs.append((level, message))
        if self.echo:
            print(f"[{level}] {message}", flush=True)

    def progress(self, step: int, total: int | None = None, message: str | None = None) -> None:
        self.steps.append((step, total, message))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.metric_rows.append((step, name, float(value)))
        if self.echo:
            shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
            print(f"step {step}: {shown}", flush=True)

    def ranks(self, step: int, ranks: dict[str, int], extra: dict[str, dict[str, Any]] | None = None) -> None:
        for module, rank in ranks.items():
            self.rank_rows.append((step, module, int(rank)))
            if extra and module in extra:
                self.rank_extras.append((step, module, dict(extra[module])))

    def checkpoint(self, path: str, step: int) -> None:
        self.checkpoints.append((path, step))

    def is_cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def series(self, name: str) -> list[tuple[int, float]]:
        """(step, value) pairs of one metric, in report order."""
        return [(step, value) for step, metric, value in self.metric_rows if metric == name]


class RegistryReporter(Reporter):
    """Writes progress, metrics, ranks and logs of job ``job_id`` to the registry.

    Progress writes and cancellation checks hit the database, so both are
    throttled: a training step can call them every step for free.
    """

    def __init__(self, registry, job_id: int, min_interval: float = 0.5):
        super().__init__()
        self.registry = registry
        self.job_id = job_id
        self.min_interval = min_interval
        self._last_progress_write = 0.0
        self._last_cancel_check = 0.0
        self._cancelled = False
        self._unwritten: tuple[int, int | None] | None = None  # a throttled step the database has not seen

    def log(self, message: str, level: str = "info") -> None:
        self.registry.add_job_log(self.job_id, message, level)

    def progress(self, step: int, total: int | None = None, message: str | None = None) -> None:
        eta = self.eta(step, total)
        now = time.monotonic()
        is_last = total is not None and step >= total
        if not is_last and message is None and now - self._last_progress_write < self.min_interval:
            self._unwritten = (step, total)
            return
        self._last_progress_write = now
        self._write(step, total, eta, message)

    def flush(self) -> None:
        """Write the last reported step if throttling held it back.

        Called when a job stops early (cancelled or failed): the job's page then says the
        step it really stopped at, not the one last written up to half a second before.
        """
        if self._unwritten is not None:
            self._write(*self._unwritten, eta=None, message=None)

    def _write(self, step: int, total: int | None, eta: float | None, message: str | None) -> None:
        self._unwritten = None
        fraction = min(1.0, step / total) if total else 0.0
        self.registry.update_job_progress(
            self.job_id, step=step, total_steps=total, progress=fraction, eta_seconds=eta, message=message
        )

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.registry.add_metrics(self.job_id, step, values, elapsed_seconds=self.elapsed)

    def ranks(self, step: int, ranks: dict[str, int], extra: dict[str, dict[str, Any]] | None = None) -> None:
        self.registry.add_rank_snapshots(self.job_id, step, ranks, extra)

    def checkpoint(self, path: str, step: int) -> None:
        self.registry.set_job_checkpoint(self.job_id, path)
        self.log(f"checkpoint at step {step}: {path}")

    def is_cancelled(self) -> bool:
        if self._cancelled:
            return True
        now = time.monotonic()
        if now - self._last_cancel_check >= self.min_interval:
            self._last_cancel_check = now
            self._cancelled = self.registry.is_cancel_requested(self.job_id)
        return self._cancelled
