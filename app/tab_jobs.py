"""Jobs tab: the queue with progress and ETA, live loss curves, logs, cancel and retry/resume, workers."""

from __future__ import annotations

import html
from functools import partial
from typing import Any

import gradio as gr

from app.ui import ago, bind, human_seconds, queue_wait_sentence
from models_db.registry import ACTIVE_STATUSES, FINAL_STATUSES
from studio.charts import empty_figure, loss_figure
from studio.jobs.outbox import queue_notice
from studio.services.container import Services
from studio.services.system import online_workers

TITLE = "Jobs"
ELEM_ID = "tab-jobs"
REFRESH_SECONDS = 2.0
# Plain symbols: colour emoji fonts are often missing on servers and in headless browsers.
STATUS_ICONS = {"queued": "…", "running": "▶", "succeeded": "✓", "failed": "✗", "cancelled": "■"}


def workers_markdown(services: Services) -> str:
    """Who can run jobs right now, and on which device."""
    workers = online_workers(services.registry, services.settings)
    if not workers:
        return "**Workers online: none.** Jobs wait in the queue until one starts (`studio worker` or `studio run`)."
    listed = " · ".join(
        f"`{w.name}` on **{w.device}** ({w.device_name})"
        + (f", busy with job #{w.current_job_id}" if w.current_job_id else ", idle")
        for w in workers
    )
    return f"**Workers online: {len(workers)}** — {listed}"


def queue_html(services: Services, limit: int = 30) -> str:
    """The job list as an HTML table with a progress bar per job."""
    jobs = services.jobs.list(limit=limit)
    if not jobs:
        return "<p class='muted'>No jobs yet. Start one from the Train tab.</p>"
    rows = []
    for job in jobs:
        pct = 100.0 if job.status == "succeeded" else max(0.0, min(100.0, (job.progress or 0.0) * 100))
        steps = f"{job.step}/{job.total_steps}" if job.total_steps else ""
        eta = human_seconds(job.eta_seconds) if job.status == "running" and job.eta_seconds is not None else ""
        where = html.escape(job.device or job.worker_host or "")
        rows.append(
            f"<tr data-job='{job.id}' class='status-{job.status}'><td>#{job.id}</td>"
            f"<td>{html.escape(job.name or job.kind)}</td><td>{job.kind}</td>"
            f"<td><span class='badge badge-{job.status}'>{STATUS_ICONS.get(job.status, '')} {job.status}</span></td>"
            f"<td><div class='bar' title='{pct:.0f}%'><span style='width:{pct:.0f}%'></span></div></td>"
            f"<td>{steps}</td><td>{eta}</td><td>{where}</td><td>{ago(job.created_at)}</td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>" for h in ("id", "name", "kind", "status", "progress", "step", "ETA", "device", "created")
    )
    return f"<table class='job-table'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def job_choices(services: Services, limit: int = 50) -> list[tuple[str, int]]:
    """``(label, id)`` of recent jobs, newest first."""
    return [(f"#{j.id} {j.name or j.kind} — {j.status}", j.id) for j in services.jobs.list(limit=limit)]


def _detail_markdown(job: Any) -> str:
    lines = [f"**#{job.id} {html.escape(job.name or job.kind)}** — {STATUS_ICONS.get(job.status, '')} {job.status}"]
    if job.status == "running":
        eta = f", about {human_seconds(job.eta_seconds)} left" if job.eta_seconds is not None else ""
        total = f"/{job.total_steps}" if job.total_steps else ""
        lines.append(f"step {job.step}{total} ({(job.progress or 0) * 100:.0f}%){eta}")
    if job.message:
        lines.append(html.escape(job.message))
    if notice := queue_notice(job):
        lines.append(f"⏳ {html.escape(notice)}")
    if job.error:
        lines.append(f"⚠ **Error:** {html.escape(job.error)}")
    if job.status == "succeeded" and (job.result or {}).get("adapter_id"):
        lines.append(f"Adapter #{job.result['adapter_id']} is ready in the Adapters and Playground tabs.")
    if job.device:
        lines.append(
            f"ran on {html.escape(job.device)}" + (f" ({html.escape(job.worker_host)})" if job.worker_host else "")
        )
    return "\n\n".join(lines)


def job_detail(services: Services, selected: int | None, last_signature: str | None = None) -> dict[str, Any]:
    """Status, chart, logs and button states of the selected job.

    The chart is only re-sent when the job moved on (``signature`` changes), so a
    2-second refresh neither re-reads the metrics nor redraws an unchanged figure.
    """
    if not selected:
        return {
            "detail": "Select a job to see its progress, loss curve and log.",
            "chart": empty_figure("No job selected."),
            "logs": "",
            "signature": None,
            "cancel_btn": gr.update(interactive=False),
            "retry_btn": gr.update(interactive=False),
        }
    job = services.jobs.get(int(selected))
    # Metrics are only read (and the figure re-sent) when the job moved on since the last refresh.
    signature = f"{job.id}:{job.step}:{job.status}:{job.attempts}"
    logs = services.jobs.logs(job.id, limit=200)
    resumable = job.kind == "train" and bool(job.checkpoint_path) and job.status in FINAL_STATUSES
    out = {
        "detail": _detail_markdown(job),
        "logs": "\n".join(f"{log.created_at:%H:%M:%S} {log.level.upper():7} {log.message}" for log in logs),
        "signature": signature,
        "cancel_btn": gr.update(interactive=job.status in ACTIVE_STATUSES),
        "retry_btn": gr.update(
            interactive=job.status in FINAL_STATUSES,
            value="Resume from checkpoint" if resumable and job.status != "succeeded" else "Retry",
        ),
    }
    if signature != last_signature:
        out["chart"] = loss_figure(services.jobs.metrics(job.id), title=f"Job #{job.id} loss")
    return out


def cancel_job(services: Services, selected: int | None) -> dict[str, Any]:
    """Ask the selected job to stop."""
    if not selected:
        raise gr.Error("Select a job first.")
    status = services.jobs.cancel(int(selected))
    gr.Info(f"Job #{selected}: cancellation requested ({status}).")
    return {"queue": queue_html(services), **job_detail(services, selected)}


def retry_job(services: Services, selected: int | None) -> dict[str, Any]:
    """Submit the selected job again; a training job resumes from its last checkpoint."""
    if not selected:
        raise gr.Error("Select a job first.")
    job = services.jobs.retry(int(selected))
    resumed = job.request.get("resume_from_job")
    gr.Info(
        f"Queued job #{job.id}"
        + (f", resuming from job #{resumed}'s checkpoint." if resumed else ".")
        + queue_wait_sentence(job)
    )
    return {
        "queue": queue_html(services),
        "selected": gr.update(choices=job_choices(services), value=job.id),
        **job_detail(services, job.id),
    }


def refresh(services: Services, selected: int | None, signature: str | None) -> dict[str, Any]:
    """Everything the timer refreshes; selects the newest job when none is selected yet."""
    choices = job_choices(services)
    if not selected and choices:
        selected = choices[0][1]
    return {
        "workers": workers_markdown(services),
        "queue": queue_html(services),
        "selected": gr.update(choices=choices, value=selected),
        **job_detail(services, selected, signature),
    }


def build(services: Services, tab: gr.Tab, demo: gr.Blocks) -> None:
    """Lay out the tab and wire its events (a timer refreshes it while the page is open)."""
    c: dict[str, Any] = {}
    c["workers"] = gr.Markdown(elem_id="jobs-workers")
    c["queue"] = gr.HTML(elem_id="jobs-queue")
    with gr.Row():
        c["selected"] = gr.Dropdown(label="Job", choices=[], value=None, elem_id="jobs-selected", scale=4)
        c["cancel_btn"] = gr.Button("Cancel", variant="stop", elem_id="jobs-cancel", scale=1, min_width=110)
        c["retry_btn"] = gr.Button("Retry", elem_id="jobs-retry", scale=1, min_width=110)
    c["signature"] = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=320):
            c["detail"] = gr.Markdown(elem_id="jobs-detail")
            c["chart"] = gr.Plot(label="Loss", elem_id="jobs-chart")
        with gr.Column(scale=2, min_width=300):
            c["logs"] = gr.Textbox(
                label="Log", lines=18, max_lines=18, autoscroll=True, interactive=False, elem_id="jobs-logs"
            )
    timer = gr.Timer(REFRESH_SECONDS)

    detail_out = {k: c[k] for k in ("detail", "chart", "logs", "signature", "cancel_btn", "retry_btn")}
    everything = detail_out | {k: c[k] for k in ("workers", "queue", "selected")}
    refresh_in = {"selected": c["selected"], "signature": c["signature"]}
    bind(timer.tick, partial(refresh, services), refresh_in, everything, show_progress="hidden")
    bind(tab.select, partial(refresh, services), refresh_in, everything)
    bind(c["selected"].input, partial(job_detail, services), {"selected": c["selected"]}, detail_out)
    bind(
        c["cancel_btn"].click,
        partial(cancel_job, services),
        {"selected": c["selected"]},
        detail_out | {"queue": c["queue"]},
    )
    bind(c["retry_btn"].click, partial(retry_job, services), {"selected": c["selected"]}, everything)
