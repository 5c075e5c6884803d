"""System tab: registry, broker, workers and their devices, base models; a one-click system check."""

from __future__ import annotations

from functools import partial
from typing import Any

import gradio as gr

from app.ui import bind, bind_submit, new_submission_token, queue_wait_sentence
from studio.schema import CheckRequest
from studio.services.container import Services

TITLE = "System"
ELEM_ID = "tab-system"


def status_markdown(services: Services) -> str:
    """A short health report as Markdown."""
    state = services.status()
    mark = {True: "✓", False: "✗"}
    lines = [
        f"**Registry** {mark[state.registry_ok]} `{state.registry_url}`",
        f"**Job queue** {mark[state.broker_ok]} `{state.broker_url}`"
        + (f" — {state.broker_error}" if state.broker_error else ""),
        f"**Workers online:** {len(state.workers)}",
    ]
    lines += [
        f"- `{w.name}` on **{w.device}** ({w.device_name})"
        + (f", running job {w.current_job_id}" if w.current_job_id else "")
        for w in state.workers
    ]
    if not state.workers:
        lines.append("- no worker is online: start one with `studio worker` (or `studio run`)")
    models = services.base_models()
    lines.append("**Base models:** " + (", ".join(f"`{m.name}`" for m in models) or "none registered yet"))
    return "\n\n".join(lines)


def jobs_rows(services: Services) -> list[list]:
    """The 20 newest jobs as table rows."""
    return [
        [j.id, j.kind, j.status, f"{j.progress * 100:.0f}%", j.worker_host or "", j.device or "", j.error or ""]
        for j in services.jobs.list(limit=20)
    ]


def refresh(services: Services) -> dict[str, Any]:
    """Health report and recent jobs."""
    return {"status": status_markdown(services), "jobs": jobs_rows(services)}


def recent_jobs(services: Services) -> dict[str, Any]:
    """The recent jobs table alone, for the timer (a database read; the health probe stays on demand)."""
    return {"jobs": jobs_rows(services)}


def run_check(services: Services, submission_token: str | None = None) -> dict[str, Any]:
    """Queue a short self-test job (one per ``submission_token``: a double click queues one)."""
    job = services.jobs.submit(CheckRequest(steps=20), submission_token=submission_token)
    waiting = queue_wait_sentence(job)
    gr.Info(f"Queued system check as job #{job.id}.{waiting}")
    notice = f"Queued system check as job #{job.id}; follow it below or in the Jobs tab.{waiting}"
    return {"notice": notice, **refresh(services)}


def build(services: Services, tab: gr.Tab, demo: gr.Blocks) -> None:
    """Lay out the tab and wire its events."""
    c: dict[str, Any] = {}
    c["status"] = gr.Markdown("Loading…", elem_id="system-status")
    with gr.Row():
        c["check_btn"] = gr.Button("Run a system check", variant="primary", elem_id="system-check")
        c["refresh_btn"] = gr.Button("Refresh", elem_id="system-refresh")
    c["notice"] = gr.Markdown()
    c["jobs"] = gr.Dataframe(
        headers=["id", "kind", "status", "progress", "worker", "device", "error"],
        interactive=False,
        elem_id="system-jobs",
    )
    out = {k: c[k] for k in ("status", "jobs")}
    token = gr.State(new_submission_token)
    bind_submit(c["check_btn"], partial(run_check, services), {}, out | {"notice": c["notice"]}, "notice", token)
    bind(c["refresh_btn"].click, partial(refresh, services), {}, out)
    # The health check probes the broker (up to a few seconds): on demand, not on a timer.
    bind(tab.select, partial(refresh, services), {}, out)
    # The jobs table follows a queued check as it runs (it stayed "queued" until Refresh was pressed).
    bind(gr.Timer(5.0).tick, partial(recent_jobs, services), {}, {"jobs": c["jobs"]}, show_progress="hidden")
