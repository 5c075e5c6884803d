"""`studio status`: is the registry reachable, the broker up, and which workers are online?"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import click

from studio.cli.common import NoWorkerNotice, services
from studio.errors import StudioError


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--check", is_flag=True, help="Also run a short system-check job and wait for it.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for the check job.")
def status(as_json: bool, check: bool, timeout: float) -> None:
    """Show the registry, the broker, the workers online with their devices, and base models."""
    svc = services()
    state = svc.status()
    models = [{"name": m.name, "source": m.source, "task": m.task} for m in svc.registry.list_base_models()]
    check_result = None
    if check:
        from studio.schema import CheckRequest

        started = time.monotonic()
        # The notice goes to stderr, so --json output stays parseable.
        notice = NoWorkerNotice(svc, can_inline=False)
        submitted = svc.jobs.submit(CheckRequest(steps=10))
        try:
            job = svc.jobs.wait(submitted.id, timeout=timeout, on_update=notice)
            outcome, error = job.status, job.error
        except StudioError as exc:  # --timeout passed: the report still prints, with the check marked
            # Cancelled, so no worker that comes up later runs a check nobody waits for.
            svc.jobs.cancel(submitted.id)
            job, outcome, error = svc.jobs.get(submitted.id), "timed out", f"{exc}; the check job was cancelled"
        check_result = {
            "job_id": job.id,
            "status": outcome,
            "seconds": round(time.monotonic() - started, 2),
            "worker": job.worker_host,
            "device": job.device,
            "error": error,
        }
    if as_json:
        payload = asdict(state) | {"healthy": state.healthy, "base_models": models, "check": check_result}
        click.echo(json.dumps(payload, indent=2, default=str))
    else:
        ok = {True: "ok", False: "UNREACHABLE"}
        click.echo(f"registry : {ok[state.registry_ok]}  {state.registry_url}")
        click.echo(f"broker   : {ok[state.broker_ok]}  {state.broker_url}")
        if state.broker_error:
            click.echo(f"           {state.broker_error}")
        click.echo(f"workers  : {len(state.workers)} online")
        for w in state.workers:
            job = f", running job {w.current_job_id}" if w.current_job_id else ""
            click.echo(
                f"  - {w.name}: {w.device} ({w.device_name}), heartbeat {w.seconds_since_heartbeat:.0f}s ago{job}"
            )
        click.echo("models   : " + (", ".join(m["name"] for m in models) or "(none registered yet)"))
        click.echo("counts   : " + ", ".join(f"{k}={v}" for k, v in sorted(state.counts.items())))
        if check_result:
            where = f" on {check_result['worker']} ({check_result['device']})" if check_result["worker"] else ""
            click.echo(
                f"check    : job {check_result['job_id']} {check_result['status']} in {check_result['seconds']} s{where}"
            )
            if check_result["error"]:
                click.echo(f"           {check_result['error']}")
    if check and check_result["status"] != "succeeded":
        raise SystemExit(1)
    if not (state.registry_ok and state.broker_ok):
        # One line a script (or a person) can act on, as for every other CLI error.
        click.echo(f"error: {state.broker_error or 'the registry database is unreachable'}", err=True)
        raise SystemExit(1)
