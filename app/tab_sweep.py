"""Sweep tab: search a variant's settings with Optuna. The space is a table built from the schemas (a checkbox,
low/high/log or choices per setting), trials are ordinary train jobs; a chosen sweep shows Optuna's charts, its
trials and its best adapter (downloadable here, or open in the Adapters tab).

"Compare variants" runs a sweep in compare mode: one trial per chosen variant at the same budget; a chosen
comparison shows the comparison table, the convergence overlay and a Markdown download.
"""

from __future__ import annotations

import json
import math
from functools import partial
from typing import Any

import gradio as gr

from app.forms import SchemaForm
from app.tab_datasets import dataset_choices
from app.ui import (
    bind,
    bind_submit,
    module_installed,
    new_submission_token,
    queue_wait_sentence,
    refreshed_jobs,
)
from studio.errors import StudioError, ValidationFailed
from studio.schema import Choices, FloatRange, IntRange, SweepRequest, TrainingHyperParams, parse_request
from studio.services.container import Services

TITLE = "Sweep"
ELEM_ID = "tab-sweep"
COLUMNS = ["search", "setting", "kind", "low", "high", "log", "choices"]
SWEEP_FIELDS = (
    "name",
    "n_trials",
    "max_hours",
    "parallel",
    "objective",
    "pruner",
    "pruner_startup_trials",
    "pruner_warmup_steps",
    "seed",
)
# The fixed training settings of every trial (a searched one overrides its fixed value).
HYPER_FIELDS = ("max_steps", "learning_rate", "batch_size", "max_length", "validation_fraction", "eval_every")
# The sweep options a comparison takes: the others (trials, pruner) follow from the variants chosen.
COMPARE_OPTIONS = ("name", "parallel", "objective", "seed")
NO_PRESET = "(each variant's defaults)"


def available() -> bool:
    """True when this installation has the sweep job kind (Optuna installed)."""
    return module_installed("studio.sweeps.job") and module_installed("optuna")


def variant_choices() -> list[str]:
    """Every registered variant."""
    from studio.variants.registry import variant_names

    return variant_names()


def space_rows(variant: str) -> list[list[Any]]:
    """The table of ``variant``'s searchable settings (none ticked), in :data:`COLUMNS` order."""
    from studio.sweeps.space import searchable_rows

    return [[row[c] for c in COLUMNS] for row in searchable_rows(variant)]


def _table_rows(table: Any) -> list[list[Any]]:
    """The Dataframe's rows as lists, whatever form Gradio hands them in (pandas, dict or lists)."""
    if table is None:
        return []
    if hasattr(table, "values") and hasattr(table, "columns"):  # pandas
        return table.values.tolist()
    if isinstance(table, dict):
        return list(table.get("data") or [])
    return list(table)


def _ticked(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def _number(setting: str, what: str, value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValidationFailed(f"Search space: {setting}: give its {what}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValidationFailed(f"Search space: {setting}: {what} {value!r} is not a number.") from None
    if math.isnan(number):
        raise ValidationFailed(f"Search space: {setting}: give its {what}.")
    if math.isinf(number):
        raise ValidationFailed(f"Search space: {setting}: {what} must be a finite number.")
    return number


def _whole(setting: str, what: str, value: Any) -> int:
    """A whole-number setting's bound: 4.7 is refused in words, not cut to 4 (4.7 to 4.2 read as "4 below 4")."""
    number = _number(setting, what, value)
    if not number.is_integer():
        raise ValidationFailed(f"Search space: {setting}: {what} {value} must be a whole number.")
    return int(number)


def _choice(raw: str) -> Any:
    raw = raw.strip()
    if raw in ("True", "False"):
        return raw == "True"
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def space_from_table(table: Any) -> dict[str, Any]:
    """The ticked rows as the request's ``space`` (ValidationFailed naming the row otherwise)."""
    space: dict[str, Any] = {}
    for row in _table_rows(table):
        search, setting, kind, low, high, log, choices = (list(row) + [None] * len(COLUMNS))[: len(COLUMNS)]
        if not _ticked(search):
            continue
        try:
            if kind == "choice":
                values = [_choice(v) for v in str(choices or "").split(",") if v.strip()]
                if not values:
                    raise ValidationFailed(f"Search space: {setting}: list at least one choice.")
                space[setting] = Choices(choices=values)
            elif kind == "int":
                space[setting] = IntRange(
                    low=_whole(setting, "low", low), high=_whole(setting, "high", high), log=_ticked(log)
                )
            else:
                lo, hi = _number(setting, "low", low), _number(setting, "high", high)
                space[setting] = FloatRange(low=lo, high=hi, log=_ticked(log))
        except ValueError as exc:  # pydantic: low above high, a log range from 0
            if isinstance(exc, ValidationFailed):
                raise
            reason = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
            raise ValidationFailed(f"Search space: {setting}: {reason.removeprefix('Value error, ')}") from None
    if not space:
        raise ValidationFailed("Search space: tick at least one setting to search.")
    return space


def make_request(
    dataset_id: Any, base_model: str | None, variant: str, table: Any, options: dict[str, Any], hyper: dict[str, Any]
) -> SweepRequest:
    """A validated SweepRequest whose space is checked against the schemas (ValidationFailed in plain words)."""
    from studio.sweeps.space import check_space

    if not dataset_id:
        raise ValidationFailed("Dataset: choose a dataset (add one in the Datasets tab).")
    fixed = TrainingHyperParams(**{k: v for k, v in hyper.items() if v is not None})
    data = {
        "kind": "sweep",
        "dataset_id": int(dataset_id),
        "base_model": base_model or "",
        "variant": variant,
        "space": {k: v.model_dump() for k, v in space_from_table(table).items()},
        "hyper": fixed.model_dump(),
        **{k: v for k, v in options.items() if v is not None},
    }
    request = parse_request(data)
    assert isinstance(request, SweepRequest)
    check_space(request)
    return request


def preset_choices() -> list[str]:
    """Every preset name some variant declares (a comparison applies one to the variants that declare it)."""
    from studio.variants.registry import list_variants

    return [NO_PRESET, *sorted({p.name for cls in list_variants() for p in cls.presets})]


def make_compare_request(
    dataset_id: Any,
    base_model: str | None,
    variants: list[str] | None,
    preset: str | None,
    options: dict[str, Any],
    hyper: dict[str, Any],
) -> SweepRequest:
    """A checked comparison sweep of ``variants`` at the fixed training settings ``hyper`` (the budget)."""
    from studio.sweeps.space import check_space

    if not dataset_id:
        raise ValidationFailed("Dataset: choose a dataset (add one in the Datasets tab).")
    if len(variants or []) < 2:
        raise ValidationFailed("Compare variants: choose at least two variants.")
    fixed = TrainingHyperParams(**{k: v for k, v in hyper.items() if v is not None})
    data = {
        "kind": "sweep",
        "mode": "compare",
        "dataset_id": int(dataset_id),
        "base_model": base_model or "",
        "space": {"variant": {"type": "categorical", "choices": list(variants or [])}},
        "variant_preset": None if not preset or preset == NO_PRESET else preset,
        "hyper": fixed.model_dump(),
        **{k: v for k, v in options.items() if v is not None and k in COMPARE_OPTIONS},
    }
    request = parse_request(data)
    assert isinstance(request, SweepRequest)
    check_space(request)
    return request


def trials_on(services: Services, parallel: int) -> str:
    """Where the trials run (see :mod:`studio.sweeps.placement`): ``"workers"`` or ``"here"``."""
    from studio.sweeps.placement import trials_placement

    return trials_placement(services.registry, services.settings, parallel)


def submit(services: Services, request: SweepRequest, submission_token: str | None = None) -> str:
    """Queue the sweep job (its trials run inside it when too few workers are online); returns a confirmation."""
    from studio.sweeps.placement import placement_sentence

    request = request.model_copy(update={"trials_on": trials_on(services, request.parallel)})
    job = services.jobs.submit(request, submission_token=submission_token)
    where = placement_sentence(request.trials_on)
    if request.mode == "compare":
        return (
            f"Queued comparison #{job.id}: {', '.join(map(str, request.space['variant'].choices))}, one trial each "
            f"at the same budget, {request.parallel} at a time, {where}. Choose it below to follow it."
            f"{queue_wait_sentence(job)}"
        )
    at_once = f"{request.parallel} at a time" if request.parallel > 1 else "one at a time"
    return (
        f"Queued sweep job #{job.id} ({request.variant}, {request.n_trials} trial{'' if request.n_trials == 1 else 's'}, {at_once}). Its trials run "
        f"{where}. Choose it below to follow it.{queue_wait_sentence(job)}"
    )


def job_choices(services: Services) -> list[tuple[str, int]]:
    """The recent sweep jobs, newest first."""
    return [
        (f"#{job.id} {_job_label(job.request)} · {job.status}", job.id)
        for job in services.jobs.list(kind="sweep", limit=50)
    ]


def _job_label(request: dict[str, Any]) -> str:
    if request.get("mode") == "compare":
        return "compare " + ", ".join(map(str, ((request.get("space") or {}).get("variant") or {}).get("choices", [])))
    return str(request.get("variant", ""))


def compare_view(services: Services, job_id: Any) -> dict[str, Any]:
    """A comparison sweep's table (a DataFrame), overlay (Plotly) and Markdown report (a file path);
    ``{"visible": False}`` for an ordinary sweep or one whose study has not started."""
    if not job_id:
        return {"visible": False}
    job = services.jobs.get(int(job_id))
    if job.request.get("mode") != "compare":
        return {"visible": False}
    from pathlib import Path

    import pandas as pd

    from studio.sweeps.compare import comparison_report

    try:
        report = comparison_report(services.registry, int(job_id))
    except KeyError:  # Optuna: no such study yet
        return {"visible": False}
    # Beside the adapter zips (data_dir/exports), rewritten on each refresh: one file per comparison, not per tick.
    path = Path(services.settings.data_dir) / "exports" / f"variant_comparison_sweep_{int(job_id)}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report["markdown"], encoding="utf-8")
    table = pd.DataFrame(report["rows"], columns=report["headers"])
    return {"visible": True, "table": table, "overlay": report["figure"], "markdown_path": str(path)}


def sweep_view(services: Services, job_id: Any) -> dict[str, Any]:
    """The chosen sweep's charts, trials table and best trial: ``{history, parallel, importances, trials,
    best (markdown), best_adapter (id or None)}``. A sweep whose study does not exist yet shows nothing."""
    empty = {"history": None, "parallel": None, "importances": None, "trials": [], "best": "", "best_adapter": None}
    if not job_id:
        return empty
    from studio.sweeps.charts import sweep_figures, trials_table

    job = services.jobs.get(int(job_id))
    try:
        figures = sweep_figures(services.registry, int(job_id))
        rows = trials_table(services.registry, int(job_id))
    except KeyError:  # Optuna: no such study (the sweep has not started yet)
        return empty | {"best": f"Sweep #{job_id} is {job.status}; its study starts when a worker takes it."}
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    objective = job.request.get("objective", "eval_loss")
    best_row = None
    if done:
        best_row = (min if objective == "eval_loss" else max)(done, key=lambda r: r["value"])
    counts = ", ".join(f"{sum(r['state'] == s for r in rows)} {s}" for s in ("complete", "pruned", "fail", "running"))
    if best_row is None:
        best = f"Sweep #{job_id} ({job.status}): {counts}; no finished trial yet."
    else:
        adapter = best_row["adapter"]
        best = (
            f"Sweep #{job_id} ({job.status}): {counts}. **Best: trial {best_row['trial']}**, {objective} "
            f"{best_row['value']:.4g}, job #{best_row['job']}, adapter **#{adapter}**."
        )
    return {
        "history": figures.get("history"),
        "parallel": figures.get("parallel"),
        "importances": figures.get("importances"),
        "trials": rows,
        "best": best,
        "best_adapter": best_row["adapter"] if best_row else None,
    }


def _trials_frame(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["trial", "state", "value", "job", "adapter"])


def build(services: Services, tab: gr.Tab, demo: gr.Blocks) -> None:
    """Lay out the tab and wire its events."""
    from app.tab_adapters import adapter_download

    c: dict[str, Any] = {}
    variants = variant_choices()
    gr.Markdown(
        "Let **Optuna** find good settings: tick the settings to search and give their ranges; every trial is an "
        "ordinary training job on the queue, run in parallel across workers. Trials whose validation curve is "
        "worse than the finished trials' median are stopped early (pruned). The best trial's adapter is one click "
        "away below.",
        elem_id="sweep-intro",
    )
    with gr.Row():
        c["dataset"] = gr.Dropdown(label="Dataset", choices=[], elem_id="sweep-dataset")
        c["base"] = gr.Textbox(label="Base model", value=services.settings.default_base_model, elem_id="sweep-base")
        c["variant"] = gr.Dropdown(label="Variant", choices=variants, value="lora", elem_id="sweep-variant")
    c["space"] = gr.Dataframe(
        value=space_rows("lora"),
        headers=COLUMNS,
        datatype=["bool", "str", "str", "number", "number", "bool", "str"],
        column_count=(len(COLUMNS), "fixed"),
        interactive=True,
        label="Search space: tick a setting to search it (numbers: low, high, log scale; others: the choices)",
        elem_id="sweep-space",
    )
    with gr.Accordion("Fixed training settings of every trial", open=False), gr.Row(elem_classes=["form-grid"]):
        hyper_form = SchemaForm(TrainingHyperParams.model_json_schema(), "sweep-hyper", only=HYPER_FIELDS)
    with gr.Row(elem_classes=["form-grid"]):
        form = SchemaForm(SweepRequest.model_json_schema(), "sweep", only=SWEEP_FIELDS)
    c["submit"] = gr.Button("Start sweep", variant="primary", elem_id="sweep-submit")
    with gr.Accordion("Compare variants (one trial each, same budget)", open=False, elem_id="sweep-compare-box"):
        gr.Markdown(
            "Train each chosen variant once on the dataset above with the **fixed training settings** above (the "
            "budget: same data, seed, steps and validation split), no pruning; the result is a comparison table and "
            "the validation loss of every variant by step."
        )
        c["compare_variants"] = gr.CheckboxGroup(
            label="Variants", choices=variants, value=["lora", "dora"], elem_id="sweep-compare-variants"
        )
        c["compare_preset"] = gr.Dropdown(
            label="Preset, for the variants that declare it",
            choices=preset_choices(),
            value=NO_PRESET,
            elem_id="sweep-compare-preset",
        )
        c["compare_submit"] = gr.Button("Compare variants", variant="primary", elem_id="sweep-compare-submit")
    c["status"] = gr.Markdown(elem_id="sweep-status")
    c["compare_token"] = gr.State(new_submission_token)
    c["submission_token"] = gr.State(new_submission_token)
    gr.Markdown("### A sweep's trials")
    c["job"] = gr.Dropdown(label="Sweep job", choices=[], elem_id="sweep-job")
    c["best"] = gr.Markdown(elem_id="sweep-best")
    with gr.Row():
        c["zip_btn"] = gr.DownloadButton("Download the best adapter", interactive=False, elem_id="sweep-best-zip")
        c["zip_sha"] = gr.Markdown(elem_id="sweep-best-sha")
    c["best_adapter"] = gr.State(None)
    with gr.Row():
        c["history"] = gr.Plot(label="Optimisation history", elem_id="sweep-history")
        c["importances"] = gr.Plot(label="Parameter importances", elem_id="sweep-importances")
    c["parallel"] = gr.Plot(label="Parallel coordinates", elem_id="sweep-parallel")
    c["trials"] = gr.Dataframe(label="Trials", interactive=False, elem_id="sweep-trials")
    with gr.Column(visible=False, elem_id="sweep-comparison") as c["comparison"]:
        gr.Markdown("### Variant comparison")
        c["compare_table"] = gr.Dataframe(label="Comparison", interactive=False, elem_id="sweep-compare-table")
        c["overlay"] = gr.Plot(label="Validation loss by step, one line per variant", elem_id="sweep-compare-overlay")
        c["compare_md"] = gr.DownloadButton("Download as Markdown", elem_id="sweep-compare-md")

    def on_variant(variant: str) -> dict[str, Any]:
        return {"space": gr.update(value=space_rows(variant))}

    def on_submit(dataset, base, variant, space, submission_token=None, **raw: Any) -> dict[str, Any]:
        options = form.values([raw[f"opt.{n}"] for n in form.names])
        hyper = hyper_form.values([raw[f"hyper.{n}"] for n in hyper_form.names])
        line = submit(services, make_request(dataset, base, variant, space, options, hyper), submission_token)
        choices = job_choices(services)
        return {"status": f"✓ {line}", "job": gr.update(choices=choices, value=choices[0][1] if choices else None)}

    def on_compare(
        dataset, base, compare_variants, compare_preset, submission_token=None, **raw: Any
    ) -> dict[str, Any]:
        options = form.values([raw[f"opt.{n}"] for n in form.names])
        hyper = hyper_form.values([raw[f"hyper.{n}"] for n in hyper_form.names])
        request = make_compare_request(dataset, base, compare_variants, compare_preset, options, hyper)
        line = submit(services, request, submission_token)
        choices = job_choices(services)
        return {"status": f"✓ {line}", "job": gr.update(choices=choices, value=choices[0][1] if choices else None)}

    def on_job(job_id, best_adapter=None) -> dict[str, Any]:
        view = sweep_view(services, job_id)
        out = {k: view[k] for k in ("history", "parallel", "importances", "best", "best_adapter")}
        comparison = compare_view(services, job_id)
        out["comparison"] = gr.update(visible=comparison["visible"])
        if comparison["visible"]:
            out |= {"compare_table": comparison["table"], "overlay": comparison["overlay"]}
            out["compare_md"] = gr.update(value=comparison["markdown_path"])
        out["trials"] = _trials_frame(view["trials"])
        if view["best_adapter"] != best_adapter:  # a new best: zip it now, so one click downloads it
            if view["best_adapter"] is None:
                out |= {"zip_btn": gr.update(value=None, interactive=False), "zip_sha": ""}
            else:
                try:
                    out |= adapter_download(services, int(view["best_adapter"]))
                except StudioError as exc:
                    out |= {"zip_btn": gr.update(value=None, interactive=False), "zip_sha": f"No download: {exc}"}
        return out

    def on_tab() -> dict[str, Any]:
        return {
            "dataset": gr.update(choices=dataset_choices(services)),
            "job": gr.update(choices=job_choices(services)),
        }

    inputs = {k: c[k] for k in ("dataset", "base", "variant", "space")}
    inputs |= {f"opt.{n}": w for n, w in form.widgets.items()}
    inputs |= {f"hyper.{n}": w for n, w in hyper_form.widgets.items()}
    bind(c["variant"].change, on_variant, {"variant": c["variant"]}, {"space": c["space"]})
    bind_submit(c["submit"], on_submit, inputs, {k: c[k] for k in ("status", "job")}, "status", c["submission_token"])
    compare_inputs = {k: c[k] for k in ("dataset", "base", "compare_variants", "compare_preset")}
    compare_inputs |= {f"opt.{n}": w for n, w in form.widgets.items()}
    compare_inputs |= {f"hyper.{n}": w for n, w in hyper_form.widgets.items()}
    bind_submit(
        c["compare_submit"],
        on_compare,
        compare_inputs,
        {k: c[k] for k in ("status", "job")},
        "status",
        c["compare_token"],
    )
    view_keys = ("history", "parallel", "importances", "best", "best_adapter", "trials", "zip_btn", "zip_sha")
    view_keys += ("comparison", "compare_table", "overlay", "compare_md")
    view_outputs = {k: c[k] for k in view_keys}
    job_inputs = {"job_id": c["job"], "best_adapter": c["best_adapter"]}
    bind(c["job"].change, on_job, {"job_id": c["job"]}, view_outputs, "best")
    bind(tab.select, on_tab, {}, {k: c[k] for k in ("dataset", "job")})
    # live: the chosen sweep's charts follow its trials, and the picker's labels each sweep's status
    timer = gr.Timer(10.0)
    bind(timer.tick, on_job, job_inputs, view_outputs, show_progress="hidden")
    bind(timer.tick, partial(refreshed_jobs, job_choices, services), {}, {"job": c["job"]}, show_progress="hidden")
