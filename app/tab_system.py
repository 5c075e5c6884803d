"""System tab: registry, broker, workers and their devices, base models; a one-click system check."""

from __future__ import annotations

import gradio as gr

from studio.schema import CheckRequest
from studio.services.container import Services

TITLE = "System"


def status_markdown(services: Services) -> str:
    """A short health report as Markdown."""
    state = services.status()
    mark = {True: "✅", False: "❌"}
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
    models = services.registry.list_base_models()
    lines.append("**Base models:** " + (", ".join(f"`{m.name}`" for m in models) or "none registered yet"))
    return "\n\n".join(lines)


def jobs_rows(services: Services) -> list[list]:
    return [
        [j.id, j.kind, j.status, f"{j.progress * 100:.0f}%", j.worker_host or "", j.device or "", j.error or ""]
        for j in services.jobs.list(limit=20)
    ]


def build(services: Services) -> None:
    status = gr.Markdown(value=lambda: status_markdown(services), elem_id="system-status")
    with gr.Row():
        check_btn = gr.Button("Run a system check", variant="primary", elem_id="system-check")
        refresh_btn = gr.Button("Refresh")
    notice = gr.Markdown()
    jobs = gr.Dataframe(
        headers=["id", "kind", "status", "progress", "worker", "device", "error"],
        value=lambda: jobs_rows(services),
        interactive=False,
        elem_id="system-jobs",
    )
    timer = gr.Timer(2.0)

    def run_check():
        job = services.jobs.submit(CheckRequest(steps=20))
        return f"Queued system check as job {job.id}.", jobs_rows(services)

    check_btn.click(run_check, outputs=[notice, jobs])
    refresh_btn.click(lambda: (status_markdown(services), jobs_rows(services)), outputs=[status, jobs])
    timer.tick(lambda: (status_markdown(services), jobs_rows(services)), outputs=[status, jobs])
