"""Helpers shared by the CLI commands."""

from __future__ import annotations

from functools import lru_cache

import click


@lru_cache(maxsize=1)
def services():
    """The services of this CLI process (built once, from the environment)."""
    from studio.services.container import build_services

    return build_services()


def echo_queue_notice(job) -> None:
    """Say so when a job waits for an unreachable broker (it stays queued and is sent when it is back)."""
    from studio.jobs.outbox import queue_notice

    notice = queue_notice(job)
    if notice:
        click.echo(f"job {job.id} is {notice}")


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain aligned text table."""
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def progress_bar(fraction: float, width: int = 30) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * filled + "-" * (width - filled) + f"] {fraction * 100:5.1f}%"


class JobLinePrinter:
    """Redraws one status line for a waiting job, only when it changes (so logs stay short)."""

    def __init__(self) -> None:
        self._last: str | None = None

    def __call__(self, job) -> None:
        eta = f" eta {job.eta_seconds:.0f}s" if job.eta_seconds else ""
        total = f"/{job.total_steps}" if job.total_steps else ""
        line = f"job {job.id} {job.status:<9} {progress_bar(job.progress)} step {job.step}{total}{eta}"
        if line != self._last:
            self._last = line
            click.echo(f"\r{line}   ", nl=False)


def wait_until_succeeded(svc, job_id: int):
    """Wait for a job with a live status line; returns it, or raises StudioError naming how it ended."""
    from studio.errors import StudioError

    job = svc.jobs.wait(job_id, on_update=JobLinePrinter())
    click.echo()
    if job.status != "succeeded":
        raise StudioError(f"job {job.id} {job.status}" + (f": {job.error}" if job.error else ""))
    return job
