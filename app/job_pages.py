"""What the Jobs tab shows for each kind of job: one entry per kind in :data:`VIEWS`.

A training job's page is about its progress, its loss curves and the adapter it made; an
evaluation's about its scores and a few answers (no loss chart, no "adapter is ready"); a
merge's about its parents, its method and what its reported error means for the adapter
it saved; a system check's about its few steps and final loss. The parts every job has
(header, status, progress, times, errors, device) are rendered here once, from the
kind's :class:`KindView`. A new job kind adds one ``VIEWS`` entry (else it gets the
plain :data:`GENERIC` view).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.ui import human_seconds
from studio.charts import TRAIN_LOSS_NAMES, VALIDATION_LOSS_NAMES, comparison_bars, loss_figure
from studio.errors import NotFoundError

CURVE_POINTS = 500  # per curve: the database keeps each step bucket's lowest and highest point
SAMPLE_ANSWERS = 3  # an evaluation's page shows this many prompts with every model's answer
SAMPLE_CHARS = 240
STATUS_ICONS = {"queued": "…", "running": "▶", "succeeded": "✓", "failed": "✗", "cancelled": "■"}


@dataclass(frozen=True)
class KindView:
    """How one kind of job is shown.

    ``unit``/``units`` name what the job's step counts ("step", "batch"); None when the
    step is only a share of the work (a merge reports thousandths), so no count is shown.
    ``describe`` gives the kind's own paragraphs; ``chart`` its figure, or None for none.
    """

    title: str
    unit: str | None
    units: str | None
    describe: Callable[[Any, Any], list[str]]
    chart: Callable[[Any, Any], Any] | None = None
    chart_label: str = ""


# Helpers ------------------------------------------------------------------------------------------


def _esc(text: Any) -> str:
    """Text safe inside Markdown: HTML escaped (quotes kept: this is never an attribute), pipes and breaks neutralised."""
    return html.escape(str(text), quote=False).replace("|", "&#124;").replace("\n", " ")


def _short(text: Any, limit: int = SAMPLE_CHARS) -> str:
    text = str(text)
    return _esc(text if len(text) <= limit else text[: limit - 1] + "…")


def _named(getter: Callable[[int], Any], item_id: int | None, what: str) -> str:
    """``dataset 'sst2-dev' (#4)``; ``dataset #4 (deleted)`` when the row is gone."""
    if item_id is None:
        return f"no {what}"
    try:
        return f"{what} '{_esc(getter(item_id).name)}' (#{item_id})"
    except NotFoundError:
        return f"{what} #{item_id} (deleted)"


def _made(services: Any, adapter_id: int) -> str:
    """``Adapter #7 'sst2-lora'``: the adapter a job made, id first (what the Adapters tab's picker shows)."""
    try:
        return f"Adapter #{adapter_id} '{_esc(services.registry.get_adapter(adapter_id).name)}'"
    except NotFoundError:
        return f"Adapter #{adapter_id} (deleted since)"


def _at(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the registry stores UTC
    return moment


def when(moment: datetime | None, now: datetime | None = None) -> str:
    """'14:02:11 UTC (8 s ago)': absolute, and relative to ``now`` (each refresh renders it anew)."""
    moment = _at(moment)
    if moment is None:
        return ""
    now = now or datetime.now(UTC)
    day = "" if moment.date() == now.date() else f"{moment:%Y-%m-%d} "
    return f"{day}{moment:%H:%M:%S} UTC ({human_seconds((now - moment).total_seconds())} ago)"


def times_line(job: Any, now: datetime | None = None) -> str:
    """When the job was created, started and finished, and how long it ran."""
    now = now or datetime.now(UTC)
    parts = [f"created {when(job.created_at, now)}"]
    if job.started_at:
        parts.append(f"started {when(job.started_at, now)}")
    if job.finished_at:
        parts.append(f"finished {when(job.finished_at, now)}")
        if job.started_at:
            parts.append(f"ran {human_seconds((_at(job.finished_at) - _at(job.started_at)).total_seconds())}")
    elif job.started_at and job.status == "running":
        parts.append(f"running for {human_seconds((now - _at(job.started_at)).total_seconds())}")
    return " · ".join(parts)


def view_of(job: Any) -> KindView:
    """The view of ``job``'s kind (the generic one for a kind without its own)."""
    return VIEWS.get(job.kind, GENERIC)


def percent(job: Any) -> float:
    """How much of the job is done, 0–100: 100 only for a job that succeeded."""
    if job.status == "succeeded":
        return 100.0
    return max(0.0, min(100.0, (job.progress or 0.0) * 100))


def step_cell(job: Any) -> str:
    """The queue's step column: '12/30', '2/5 batches', 'stopped at 3/400'; empty where steps mean nothing."""
    view = view_of(job)
    if view.unit is None or not job.total_steps:
        return ""
    count = f"{job.step}/{job.total_steps}" + ("" if view.unit == "step" else f" {view.units}")
    return f"stopped at {count}" if job.status in ("cancelled", "failed") else count


def steps_done(job: Any) -> bool:
    """Whether a running job has reported its last step: what it does now (saving, a transfer kit) is not counted."""
    return job.status == "running" and bool(job.total_steps) and (job.step or 0) >= job.total_steps


def time_left(job: Any) -> float | None:
    """The ETA to show, or None when unknown.

    The ETA is paced on the steps, so past the last one it reads 0 s while a final stage
    (a transfer kit trains a discriminator for minutes) is still running: unknown, not 0.
    """
    if job.status != "running" or steps_done(job):
        return None
    return job.eta_seconds


def progress_line(job: Any) -> str:
    """Where the job is or where it stopped, in the kind's unit (or as a share when it has none)."""
    view = view_of(job)
    counted = view.unit is not None and bool(job.total_steps)
    pct = f"{percent(job):.0f}%"
    if job.status == "queued":
        return ""
    if job.status == "running":
        left = time_left(job)
        eta = f", about {human_seconds(left)} left" if left is not None else ""
        where = f"{view.unit} {job.step} of {job.total_steps} ({pct})" if counted else f"{pct} done"
        if counted and steps_done(job):
            where = f"all {job.total_steps} {view.units} done, finishing"
        phase = f" — {_esc(job.message)}" if job.message else ""
        return f"{where}{eta}{phase}"
    if job.status == "succeeded":
        return f"done: all {job.total_steps} {view.units}" if counted else ""
    # cancelled or failed: where it stopped
    if not job.started_at:
        return "stopped before it started"
    phase = f" (during: {_esc(job.message)})" if job.message else ""
    if counted:
        where = f"stopped at {view.unit} {job.step} of {job.total_steps} ({pct})"
        if job.step >= job.total_steps:
            where += ", before the job finished"
        return where + phase
    return f"stopped at about {pct} of the work" + phase


def detail_markdown(services: Any, job: Any, now: datetime | None = None) -> str:
    """The whole page text of ``job``: header, progress, times, the kind's own part, notices, errors."""
    from studio.jobs.outbox import queue_notice

    view = view_of(job)
    icon = STATUS_ICONS.get(job.status, "")
    lines = [f"**#{job.id} {_esc(job.name or job.kind)}** — {icon} {job.status} · {view.title}"]
    if line := progress_line(job):
        lines.append(line)
    lines.append(times_line(job, now))
    lines.extend(view.describe(services, job))
    if job.status == "queued" and job.message:
        lines.append(_esc(job.message))
    if notice := queue_notice(job):
        lines.append(f"⏳ {_esc(notice)}")
    if job.error:
        lines.append(f"⚠ **Error:** {_esc(job.error)}")
    if job.device:
        verb = "running on" if job.status == "running" else "ran on"  # "ran on cpu" read as finished
        lines.append(f"{verb} {_esc(job.device)}" + (f" ({_esc(job.worker_host)})" if job.worker_host else ""))
    return "\n\n".join(lines)


# Training -----------------------------------------------------------------------------------------


def _train_describe(services: Any, job: Any) -> list[str]:
    request, result = job.request, job.result or {}
    hyper = request.get("hyper") or {}
    length = f"{hyper['max_steps']} steps" if hyper.get("max_steps") else f"{hyper.get('epochs', 1):g} epochs"
    lines = [
        f"{_esc(request.get('variant', 'lora'))} on `{_esc(request.get('base_model', ''))}`, "
        f"{_named(services.registry.get_dataset, request.get('dataset_id'), 'dataset')}; {length}, "
        f"learning rate {hyper.get('learning_rate', 2e-4):g}, batch {hyper.get('batch_size', 8)}, "
        f"seed {request.get('seed')}"
    ]
    if request.get("resume_from_job"):
        lines.append(f"Resumed from job #{request['resume_from_job']}'s checkpoint.")
    if job.status == "succeeded" and result.get("adapter_id"):
        losses = [
            f"{label} {result[key]:.4g}"
            for key, label in (("final_loss", "final training loss"), ("eval_loss", "validation loss"))
            if isinstance(result.get(key), int | float)
        ]
        lines.append(f"{_made(services, result['adapter_id'])} is ready in the Adapters and Playground tabs.")
        if losses:
            lines.append(", ".join(losses) + f" after {result.get('steps')} steps.")
    elif job.status in ("cancelled", "failed") and job.checkpoint_path:
        lines.append("A checkpoint was saved: **Resume from checkpoint** continues from it.")
    return lines


def _loss_chart(services: Any, job: Any) -> Any:
    curves = services.jobs.curves(job.id, list(TRAIN_LOSS_NAMES + VALIDATION_LOSS_NAMES), CURVE_POINTS)
    return loss_figure(curves, title=f"Job #{job.id} loss")


# Evaluation ---------------------------------------------------------------------------------------


def _eval_describe(services: Any, job: Any) -> list[str]:
    request, result = job.request, job.result or {}
    ids = ([request["adapter_id"]] if request.get("adapter_id") else []) + list(request.get("adapter_ids") or [])
    models = [f"base `{_esc(request['base_model'])}`"] if request.get("base_model") else []
    models += [_named(services.registry.get_adapter, i, "adapter") for i in dict.fromkeys(ids)]
    dataset = _named(services.registry.get_dataset, request.get("dataset_id"), "dataset")
    metrics = ", ".join(request.get("metrics") or ["loss"])
    lines = [
        f"Evaluates {' vs '.join(models)} on {dataset}: {metrics}, at most {request.get('max_examples', 200)} rows."
    ]
    if job.status != "succeeded" or not result.get("comparison"):
        return lines
    from app.tab_evaluate import comparison_table, paired_markdown, samples_table

    lines.append(f"**Scores** on {result.get('examples')} rows (★ best):")
    lines.append(_markdown_table(*comparison_table(result)))
    paired = paired_markdown(result)
    if paired:
        lines.append(paired)
    headers, rows = samples_table(result)
    if rows:
        lines.append(f"**Sample answers** (the first {min(SAMPLE_ANSWERS, len(rows))} of {len(rows)}):")
        lines.append(_markdown_table(headers, rows[:SAMPLE_ANSWERS]))
    lines.append("All samples and the comparison chart: Evaluate tab → Results.")
    return lines


def _markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "| " + " | ".join(_esc(h) for h in headers) + " |"
    rule = "|" + "---|" * len(headers)
    body = ["| " + " | ".join(_short(cell) for cell in row) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def _eval_chart(services: Any, job: Any) -> Any:
    result = job.result or {}
    if job.status != "succeeded" or not result.get("comparison"):
        return None
    return comparison_bars(result, title=f"Job #{job.id} scores")


# Merge --------------------------------------------------------------------------------------------


def _merge_describe(services: Any, job: Any) -> list[str]:
    from studio.merging.error_meaning import merge_error_sentence

    request, result = job.request, job.result or {}
    ids = list(request.get("adapter_ids") or [])
    weights = result.get("weights") or request.get("weights")
    parents = [_named(services.registry.get_adapter, i, "adapter") for i in ids]
    if weights and len(weights) == len(parents):
        parents = [f"{p} × {w:g}" for p, w in zip(parents, weights, strict=True)]
    method = request.get("method", "linear")
    options = [f"method `{_esc(method)}`"]
    if method != "linear":
        options.append(f"density {request.get('density', 0.2):g}")
    options.append(f"rank {request['rank']}" if request.get("rank") else "rank: the sum of the parents' ranks")
    lines = [f"Merges {', '.join(parents)}; {', '.join(options)}."]
    if job.status == "succeeded" and result.get("adapter_id"):
        ranks = f"ranks {result.get('rank_min')}–{result.get('rank_max')}"
        made = _made(services, result["adapter_id"])
        lines.append(f"{made}: {result.get('modules')} modules, {ranks}; it is in the Adapters and Playground tabs.")
        lines.append(merge_error_sentence(result.get("merge_max_error"), request.get("rank")))
    return lines


# System check -------------------------------------------------------------------------------------


def _check_describe(services: Any, job: Any) -> list[str]:
    result = job.result or {}
    lines = [f"Fits a small regression for {job.request.get('steps')} steps on the worker's device."]
    if job.status == "succeeded" and isinstance(result.get("final_loss"), int | float):
        lines.append(f"Final loss {result['final_loss']:.3g} on {_esc(result.get('device', job.device))}.")
    return lines


# Personalised (RecLoRA) ------------------------------------------------------------------------------


def _personalise_describe(services: Any, job: Any) -> list[str]:
    request, result = job.request or {}, job.result or {}
    lines = [
        f"Trains {request.get('n_meta')} shared meta-LoRAs of rank {request.get('rank')} per module and a per-user "
        f"gate on dataset #{request.get('dataset_id')}, users from column '{_esc(request.get('user_column'))}'."
    ]
    if job.status == "succeeded" and result.get("adapter_id"):
        made = _made(services, result["adapter_id"])
        lines.append(
            f"{made}: {result.get('users')} users; export one with `studio export {result['adapter_id']} --user NAME`, "
            f"or chat as a user through /v1 with the `user` field."
        )
    return lines


# ICM-LoRA generators and generated adapters ---------------------------------------------------------


def _generator_describe(services: Any, job: Any) -> list[str]:
    request, result = job.request or {}, job.result or {}
    sources = ", ".join(f"#{i}" for i in request.get("adapter_ids") or [])
    lines = [
        f"Trains an ICM-LoRA generator ({_esc(request.get('preset'))}, {request.get('epochs')} epochs) on the "
        f"checkpoints of adapters {sources}, one task each."
    ]
    if job.status == "succeeded" and result.get("generator_id"):
        share = result.get("size_vs_checkpoints")
        size = f", {share:.1%} of their size" if isinstance(share, int | float) else ""
        lines.append(
            f"Generator #{result['generator_id']}: learnt {result.get('checkpoints')} checkpoints{size}; "
            "generate adapters with it under Transfer & Generate."
        )
    return lines


def _generate_describe(services: Any, job: Any) -> list[str]:
    request, result = job.request or {}, job.result or {}
    lines = [
        f"Generates an adapter with generator #{request.get('generator_id')} from the first "
        f"{request.get('examples')} rows of dataset #{request.get('dataset_id')}."
    ]
    if job.status == "succeeded" and result.get("adapter_id"):
        made = _made(services, result["adapter_id"])
        lines.append(f"{made}; it is in the Adapters, Evaluate and Playground tabs.")
    return lines


def _federated_chart(services: Any, job: Any) -> Any:
    """Global validation loss and each client's local loss per round (the Federated tab has ε and bytes too)."""
    from studio.federated.charts import round_charts

    return round_charts(services.jobs.metrics(job.id), title=f"Job #{job.id}: ")["loss"]


def _sweep_describe(services: Any, job: Any) -> list[str]:
    """Where the rest of a sweep is: its charts, trials table and best adapter live in the Sweep tab."""
    what = "comparison" if job.request.get("mode") == "compare" else "sweep"
    return [
        f"Each trial is a training job of its own; the {what}'s charts, trials and best adapter are in the Sweep tab."
    ]


def _generic_describe(services: Any, job: Any) -> list[str]:
    return []


VIEWS: dict[str, KindView] = {
    "train": KindView("training", "step", "steps", _train_describe, _loss_chart, "Loss"),
    "eval": KindView("evaluation", "batch", "batches", _eval_describe, _eval_chart, "Scores"),
    "merge": KindView("merge", None, None, _merge_describe),
    "check": KindView("system check", "step", "steps", _check_describe, _loss_chart, "Loss"),
    "personalise": KindView("personalised training", "step", "steps", _personalise_describe, _loss_chart, "Loss"),
    "generator": KindView("generator training", None, None, _generator_describe, _loss_chart, "Loss"),
    "generate": KindView("adapter generation", None, None, _generate_describe),
    "federated": KindView(
        "federated training", "round", "rounds", _generic_describe, _federated_chart, "Loss per round"
    ),
    # A sweep's step counts its finished trials: 'step 0 of 2' read as a training step.
    "sweep": KindView("settings sweep", "trial", "trials", _sweep_describe),
}
GENERIC = KindView("job", "step", "steps", _generic_describe)
