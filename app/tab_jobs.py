"""Jobs tab: the queue with progress and ETA, a page per job (by kind: app.job_pages), logs, cancel, retry, workers."""

from __future__ import annotations

import html
from functools import partial
from typing import Any

import gradio as gr

from app.job_pages import STATUS_ICONS, detail_markdown, percent, step_cell, time_left, view_of, when
from app.latest_view import LatestView, newest_read_wins
from app.ui import ago, bind, human_seconds, new_submission_token, queue_wait_sentence
from models_db.registry import ACTIVE_STATUSES, FINAL_STATUSES
from studio.charts import empty_figure
from studio.errors import NotFoundError
from studio.schema import JobFilters
from studio.services.container import Services
from studio.services.system import online_workers

TITLE = "Jobs"
ELEM_ID = "tab-jobs"
REFRESH_SECONDS = 2.0
PAGE_SIZE = 30
ALL = "All"


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


def _chosen_statuses(status: str | None) -> list[str] | None:
    return None if status in (None, "", ALL) else [status]


def jobs_page(services: Services, search: str | None = None, status: str | None = None, page: Any = 1):
    """``(jobs, total, page number)`` of one page of the queue, newest first, paged by the database."""
    filters = JobFilters(status=_chosen_statuses(status))
    number = max(1, _as_int(page))
    jobs, total = services.jobs.page(filters, search, "newest", (number - 1) * PAGE_SIZE, PAGE_SIZE)
    if not jobs and number > 1:  # past the end: the last page
        number = max(1, -(-total // PAGE_SIZE))
        jobs, total = services.jobs.page(filters, search, "newest", (number - 1) * PAGE_SIZE, PAGE_SIZE)
    return jobs, total, number


def _as_int(value: Any) -> int:
    try:
        return int(value or 1)
    except (TypeError, ValueError):
        return 1


def queue_html(services: Services, search: str | None = None, status: str | None = None, page: Any = 1) -> str:
    """One page of the job list as an HTML table with a progress bar per job."""
    jobs, total, number = jobs_page(services, search, status, page)
    return _queue_table(jobs, total, number, filtered=bool((search or "").strip() or _chosen_statuses(status)))


def _queue_table(jobs: list[Any], total: int, number: int, filtered: bool = False) -> str:
    if not jobs:
        if filtered:
            return "<p class='muted'>No job matches the search.</p>"
        return "<p class='muted'>No jobs yet. Start one from the Train tab.</p>"
    rows = []
    for job in jobs:
        pct = percent(job)
        left = time_left(job)
        eta = "" if left is None else human_seconds(left)
        where = html.escape(job.device or job.worker_host or "")
        rows.append(
            f"<tr data-job='{job.id}' class='status-{job.status}'><td>#{job.id}</td>"
            f"<td>{html.escape(job.name or job.kind)}</td><td>{job.kind}</td>"
            f"<td><span class='badge badge-{job.status}'>{STATUS_ICONS.get(job.status, '')} {job.status}</span></td>"
            f"<td><div class='bar' title='{pct:.0f}%'><span style='width:{pct:.0f}%'></span></div></td>"
            f"<td>{step_cell(job)}</td><td>{eta}</td><td>{where}</td>"
            # Re-rendered by every refresh, so "8 s ago" moves on; the exact time is in the tooltip.
            f"<td title='{html.escape(when(job.created_at))}'>{ago(job.created_at)}</td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>" for h in ("id", "name", "kind", "status", "progress", "step", "ETA", "device", "created")
    )
    first = (number - 1) * PAGE_SIZE + 1
    caption = f"<caption>Jobs {first:,}–{first + len(jobs) - 1:,} of {total:,}</caption>"
    return f"<table class='job-table'>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _job_label(job: Any) -> str:
    return f"#{job.id} {job.name or job.kind} — {job.status}"


def job_choices(services: Services, search: str | None = None, status: str | None = None) -> list[tuple[str, int]]:
    """``(label, id)`` of the newest jobs matching the search (at most one page), newest first."""
    return [(_job_label(j), j.id) for j in jobs_page(services, search, status)[0]]


def job_detail(services: Services, selected: int | None, last_signature: str | None = None) -> dict[str, Any]:
    """Status, the kind's page and chart, logs and button states of the selected job.

    The page text (with its relative times) is rendered on every refresh; the chart is only
    re-sent when the job moved on (``signature`` changes), so a 2-second refresh neither
    re-reads the metrics nor redraws an unchanged figure. Kinds without a chart hide it.
    """
    if not selected:
        return {
            "detail": "Select a job to see its progress, loss curve and log.",
            "chart": gr.update(value=empty_figure("No job selected."), visible=True, label="Loss"),
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
        "detail": detail_markdown(services, job),
        "logs": "\n".join(f"{log.created_at:%H:%M:%S} {log.level.upper():7} {log.message}" for log in logs),
        "signature": signature,
        "cancel_btn": gr.update(interactive=job.status in ACTIVE_STATUSES),
        "retry_btn": gr.update(
            interactive=job.status in FINAL_STATUSES,
            value="Resume from checkpoint" if resumable and job.status != "succeeded" else "Retry",
        ),
    }
    if signature != last_signature:
        view = view_of(job)
        figure = view.chart(services, job) if view.chart else None
        out["chart"] = (
            gr.update(value=figure, visible=True, label=view.chart_label)
            if figure is not None
            else gr.update(value=None, visible=False)
        )
    return out


def cancel_job(services: Services, selected: int | None, **view: Any) -> dict[str, Any]:
    """Ask the selected job to stop."""
    if not selected:
        raise gr.Error("Select a job first.")
    status = services.jobs.cancel(int(selected))
    gr.Info(f"Job #{selected}: cancellation requested ({status}).")
    return {"queue": queue_html(services, **view), **job_detail(services, selected)}


def retry_job(
    services: Services, selected: int | None, submission_token: str | None = None, **view: Any
) -> dict[str, Any]:
    """Submit the selected job again; a training job resumes from its last checkpoint.

    With the tab's ``submission_token``, the second click of a double click finds the first retry's job.
    """
    if not selected:
        raise gr.Error("Select a job first.")
    job = services.jobs.retry(int(selected), submission_token=submission_token)
    resumed = job.request.get("resume_from_job")
    gr.Info(
        f"Queued job #{job.id}"
        + (f", resuming from job #{resumed}'s checkpoint." if resumed else ".")
        + queue_wait_sentence(job)
    )
    return refresh(services, job.id, None, **view) | {"retry_token": new_submission_token()}


def refresh(
    services: Services,
    selected: int | None,
    signature: str | None,
    search: str | None = None,
    status: str | None = None,
    page: Any = 1,
) -> dict[str, Any]:
    """Everything the timer refreshes; selects the newest job when none is selected yet.

    One page query feeds both the queue table and the job picker; the selected job stays
    offered when it is on another page.
    """
    jobs, total, number = jobs_page(services, search, status, page)
    choices = [(_job_label(j), j.id) for j in jobs]
    if not selected and choices:
        selected = choices[0][1]
    if selected and all(value != int(selected) for _, value in choices):
        try:
            choices.append((_job_label(services.jobs.get(int(selected))), int(selected)))
        except NotFoundError:
            selected = None
    filtered = bool((search or "").strip() or _chosen_statuses(status))
    return {
        "workers": workers_markdown(services),
        "queue": _queue_table(jobs, total, number, filtered),
        "selected": gr.update(choices=choices, value=selected),
        "page": gr.update(value=number, maximum=max(1, -(-total // PAGE_SIZE))),
        **job_detail(services, selected, signature),
    }


def turn_page(services: Services, step: int, page: Any, **current: Any) -> dict[str, Any]:
    """The previous (``step`` -1) or next (+1) page of the queue."""
    return refresh(services, page=max(1, _as_int(page) + step), **current)


def build(services: Services, tab: gr.Tab, demo: gr.Blocks) -> None:
    """Lay out the tab and wire its events (a timer refreshes it while the page is open)."""
    c: dict[str, Any] = {}
    c["workers"] = gr.Markdown(elem_id="jobs-workers")
    with gr.Row():
        c["search"] = gr.Textbox(
            label="Search", placeholder="name or #id", elem_id="jobs-search", scale=3, info="Press Enter to search."
        )
        c["status"] = gr.Dropdown(
            label="Status", choices=[ALL, *STATUS_ICONS], value=ALL, elem_id="jobs-status", scale=1
        )
        c["prev_btn"] = gr.Button("◀ Newer", elem_id="jobs-prev", scale=1, min_width=100)
        c["page"] = gr.Number(label="Page", value=1, minimum=1, precision=0, elem_id="jobs-page", scale=1)
        c["next_btn"] = gr.Button("Older ▶", elem_id="jobs-next", scale=1, min_width=100)
    c["queue"] = gr.HTML(elem_id="jobs-queue")
    with gr.Row():
        c["selected"] = gr.Dropdown(
            label="Job",
            choices=[],
            value=None,
            filterable=True,
            elem_id="jobs-selected",
            scale=4,
            info=f"The jobs of this page (at most {PAGE_SIZE}); search above to find others.",
        )
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
    # Every event below renders the same panes and may run beside another: the newest read wins.
    clock = {"view": gr.State(LatestView)}

    view = {k: c[k] for k in ("search", "status", "page")}
    detail_out = {k: c[k] for k in ("detail", "chart", "logs", "signature", "cancel_btn", "retry_btn")}
    everything = detail_out | {k: c[k] for k in ("workers", "queue", "selected", "page")}
    refresh_in = clock | {"selected": c["selected"], "signature": c["signature"]} | view
    newest_refresh = newest_read_wins(partial(refresh, services))
    bind(timer.tick, newest_refresh, refresh_in, everything, show_progress="hidden")
    bind(tab.select, newest_refresh, refresh_in, everything)
    # A new search or status starts again at page 1.
    new_view = clock | {"selected": c["selected"], "signature": c["signature"]}
    new_view |= {"search": c["search"], "status": c["status"]}
    bind(c["search"].submit, newest_refresh, new_view, everything)
    bind(c["status"].input, newest_refresh, new_view, everything)
    bind(c["page"].submit, newest_refresh, refresh_in, everything)
    for button, step in ((c["prev_btn"], -1), (c["next_btn"], 1)):
        bind(button.click, newest_read_wins(partial(turn_page, services, step)), refresh_in, everything)
    bind(
        c["selected"].input,
        newest_read_wins(partial(job_detail, services)),
        clock | {"selected": c["selected"]},
        detail_out,
    )
    bind(
        c["cancel_btn"].click,
        newest_read_wins(partial(cancel_job, services)),
        clock | {"selected": c["selected"]} | view,
        detail_out | {"queue": c["queue"]},
    )
    c["retry_token"] = gr.State(new_submission_token)  # renewed after each retry: a double click retries once
    bind(
        c["retry_btn"].click,
        newest_read_wins(partial(retry_job, services), always=("retry_token",)),
        clock | {"selected": c["selected"], "submission_token": c["retry_token"]} | view,
        everything | {"retry_token": c["retry_token"]},
    )
