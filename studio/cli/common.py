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


inline_option = click.option(
    "--inline",
    is_flag=True,
    help="Run the job in this process, with no worker (embedded broker only); implies waiting for it.",
)


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

    def interrupt(self, message: str) -> None:
        """Print ``message`` on a line of its own (on stderr) and redraw the status line after it."""
        if self._last is not None:
            click.echo()
        click.echo(message, err=True)
        self._last = None


class NoWorkerNotice:
    """The on_update of a wait that says when a queued job has no worker online (see NoWorkerWatch)."""

    def __init__(self, svc, can_inline: bool, printer: JobLinePrinter | None = None):
        from studio.services.system import workers_serving_queue
        from studio.services.waiting import NoWorkerWatch, no_worker_message

        settings = svc.settings
        self._printer = printer
        self._watch = NoWorkerWatch(
            lambda: workers_serving_queue(svc.registry, settings),
            settings.no_worker_grace_seconds,
            no_worker_message(settings, can_inline),
        )

    def __call__(self, job) -> None:
        if self._printer is not None:
            self._printer(job)
        message = self._watch.check(job)
        if message is None:
            return
        if self._printer is not None:
            self._printer.interrupt(message)
        else:
            click.echo(message, err=True)


def wait_for_job(svc, job_id: int, inline: bool = False, can_inline: bool = True):
    """Wait for a job with a live status line and return it once final.

    With ``inline`` the job runs in this process (studio/jobs/inline.py); otherwise a
    worker must run it, and the user is told when none is online rather than left
    looking at a 0 % bar.
    """
    printer = JobLinePrinter()
    if inline:
        from studio.jobs.inline import run_job_inline

        try:
            job = run_job_inline(job_id, svc.registry, svc.settings, lambda jid: svc.jobs.wait(jid, on_update=printer))
        except KeyboardInterrupt:
            click.echo(f"\njob {job_id} {svc.jobs.get(job_id).status} (interrupted)", err=True)
            raise
    else:
        try:
            job = svc.jobs.wait(job_id, on_update=NoWorkerNotice(svc, can_inline, printer))
        except KeyboardInterrupt:
            # Ctrl-C only ends the wait: the job stays in the queue, and a bare "aborted" let
            # users believe it was gone (it would still run, or sit queued, unseen).
            click.echo(f"\n{left_in_queue_message(svc.jobs.get(job_id))}", err=True)
            raise
    click.echo()
    return job


def left_in_queue_message(job) -> str:
    """What a user who stopped waiting for ``job`` needs to know: it goes on, and how to follow or stop it."""
    if job.status in ("queued", "running"):
        return (
            f"stopped waiting; job {job.id} is still {job.status} and goes on without this command: "
            f"`studio jobs show {job.id}` follows it, `studio jobs cancel {job.id}` stops it"
        )
    return f"stopped waiting; job {job.id} {job.status}: `studio jobs show {job.id}` has its details"


def wait_until_succeeded(svc, job_id: int, inline: bool = False):
    """Wait for a job (or run it ``inline``); returns it, or raises StudioError naming how it ended."""
    from studio.errors import StudioError

    job = wait_for_job(svc, job_id, inline=inline)
    if job.status != "succeeded":
        raise StudioError(f"job {job.id} {job.status}" + (f": {job.error}" if job.error else ""))
    return job


def submit_and_wait(svc, request, what: str, detail: str, wait: bool, inline: bool):
    """Queue ``request`` and say so ("queued <what> job N (<detail>)"); with ``wait``/``inline`` wait for it.

    Returns the succeeded job, or None when the caller did not ask to wait. A failed or
    cancelled job raises StudioError naming how it ended (see :func:`wait_until_succeeded`).
    """
    job = svc.jobs.submit(request)
    click.echo(f"queued {what} job {job.id}" + (f" ({detail})" if detail else ""))
    echo_queue_notice(job)
    if not (wait or inline):
        return None
    return wait_until_succeeded(svc, job.id, inline=inline)
