"""`studio jobs`: list, inspect, cancel and retry jobs; `studio jobs check` queues a self-test."""

from __future__ import annotations

import click

from models_db.registry import ACTIVE_STATUSES, FINAL_STATUSES
from studio.cli.common import echo_queue_notice, inline_option, services, table, wait_for_job

# Every status a job can have: a typo in --status is refused rather than listing "(none)".
JOB_STATUSES = ACTIVE_STATUSES + FINAL_STATUSES


@click.group(invoke_without_command=True)
@click.option(
    "--status",
    "status_filter",
    multiple=True,
    type=click.Choice(JOB_STATUSES),
    help="Only jobs with this status (repeatable).",
)
@click.pass_context
def jobs(ctx: click.Context, status_filter: tuple[str, ...]) -> None:
    """List jobs (newest first); sub-commands act on one job."""
    if ctx.invoked_subcommand is not None:
        return
    rows = [
        {
            "id": j.id,
            "kind": j.kind,
            "status": j.status,
            "name": j.name,
            "progress": f"{j.progress * 100:.0f}%",
            "worker": j.worker_host or "",
            "created": j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        }
        for j in services().jobs.list(status=list(status_filter) or None)
    ]
    click.echo(table(rows, ["id", "kind", "status", "name", "progress", "worker", "created"]))


@jobs.command("show")
@click.argument("job_id", type=int)
def show(job_id: int) -> None:
    """Details, last metrics and log of one job."""
    svc = services().jobs
    job = svc.get(job_id)
    for key in (
        "id",
        "kind",
        "status",
        "name",
        "worker_host",
        "device",
        "attempts",
        "step",
        "total_steps",
        "progress",
        "error",
        "checkpoint_path",
        "result",
        "created_at",
        "started_at",
        "finished_at",
    ):
        click.echo(f"{key:16}: {getattr(job, key)}")
    latest: dict[str, float] = {}
    for m in svc.metrics(job_id):
        latest[m.name] = m.value
    if latest:
        click.echo("metrics         : " + ", ".join(f"{k}={v:.4g}" for k, v in latest.items()))
    for line in svc.logs(job_id, limit=20):
        click.echo(f"  [{line.level}] {line.message.splitlines()[0] if line.message else ''}")


@jobs.command("cancel")
@click.argument("job_id", type=int)
def cancel(job_id: int) -> None:
    """Cancel a queued or running job (a running one stops at its next step)."""
    svc = services()
    before = svc.jobs.get(job_id).status
    status = svc.jobs.cancel(job_id)
    if before not in ("queued", "running"):
        # "job 3: succeeded" read as if the cancel had done something.
        click.echo(f"job {job_id} already ended ({before}): nothing to cancel")
        return
    click.echo(f"job {job_id}: {status}")


@jobs.command("retry")
@click.argument("job_id", type=int)
def retry(job_id: int) -> None:
    """Submit a finished job again (training resumes from its last checkpoint)."""
    job = services().jobs.retry(job_id)
    click.echo(f"queued job {job.id} (retry of {job_id})")
    echo_queue_notice(job)


@jobs.command("logs")
@click.argument("job_id", type=int)
def logs(job_id: int) -> None:
    """Print a job's log (its last 500 lines)."""
    svc = services().jobs
    job = svc.get(job_id)  # an unknown id is an error, not an empty log
    lines = svc.logs(job_id)
    if not lines:
        click.echo(f"job {job_id} ({job.status}) has no log lines yet")
    for line in lines:
        click.echo(f"{line.created_at:%H:%M:%S} [{line.level}] {line.message}")


@jobs.command("check")
@click.option("--steps", default=20, show_default=True, help="Optimisation steps.")
@click.option("--step-seconds", default=0.0, show_default=True, help="Pause after each step, to watch progress.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait and show progress.")
@inline_option
def check(steps: int, step_seconds: float, wait: bool, inline: bool) -> None:
    """Queue a short system-check job (proves a worker picks up work; --inline proves this machine can run one)."""
    from studio.jobs.inline import check_inline_allowed
    from studio.schema import CheckRequest

    svc = services()
    if inline:
        check_inline_allowed(svc.settings)
    job = svc.jobs.submit(CheckRequest(steps=steps, step_seconds=step_seconds))
    click.echo(f"queued job {job.id}")
    echo_queue_notice(job)
    if wait or inline:
        job = wait_for_job(svc, job.id, inline=inline)
        click.echo(f"job {job.id} {job.status}" + (f": {job.error}" if job.error else ""))
        if job.status != "succeeded":
            raise SystemExit(1)
