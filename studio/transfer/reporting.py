"""A reporter that lets a sub-step (a kit's discriminator, a transfer's student) report through a job's own.

The inner training loop reports steps, metrics and checkpoints as if it were the whole job;
inside a train job that would overwrite the job's loss curve and resume point with the
discriminator's. This wrapper passes logs and cancellation through, keeps or drops metrics and
checkpoints as asked, and turns the loop's progress into the job's progress with a message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from studio.progress import Reporter


class StageReporter(Reporter):
    """Forward to ``inner``; ``describe(step, total)`` is the progress text of each step of the stage."""

    def __init__(
        self,
        inner: Reporter,
        describe: Callable[[int, int | None], str],
        *,
        keep_metrics: bool = False,
        keep_checkpoints: bool = False,
        progress: Callable[[int, int | None], tuple[int, int | None]] | None = None,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.describe = describe
        self.keep_metrics = keep_metrics
        self.keep_checkpoints = keep_checkpoints
        # maps the stage's (step, total) to the job's; default: the stage's own
        self.map_progress = progress or (lambda step, total: (step, total))

    def log(self, message: str, level: str = "info") -> None:
        self.inner.log(message, level)

    def progress(self, step: int, total: int | None = None, message: str | None = None) -> None:
        job_step, job_total = self.map_progress(step, total)
        self.inner.progress(job_step, job_total, self.describe(step, total))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if self.keep_metrics:
            self.inner.metrics(step, values)

    def ranks(self, step: int, ranks: dict[str, int], extra: dict[str, dict[str, Any]] | None = None) -> None:
        if self.keep_metrics:
            self.inner.ranks(step, ranks, extra)

    def checkpoint(self, path: str, step: int) -> None:
        if self.keep_checkpoints:
            self.inner.checkpoint(path, step)

    def is_cancelled(self) -> bool:
        return self.inner.is_cancelled()
