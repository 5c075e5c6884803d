"""Adapters tab: filterable table, details, rank charts, convergence overlay, params-vs-metric, downloads, delete."""

from __future__ import annotations

import html
from functools import partial
from typing import Any

import gradio as gr

from app.tab_evaluate import eval_results_markdown
from app.ui import ago, bind, human_bytes
from studio.charts import convergence_figure, empty_figure, final_rank_bars, params_metric_scatter, rank_heatmap
from studio.charts_diagnostics import diagnostics_figure, stage_figure
from studio.services.container import Services

TITLE = "Adapters"
ELEM_ID = "tab-adapters"
ALL = "All"
DEFAULT_METRIC = "eval_loss"
HEADERS = ["id", "name", "variant", "base model", "dataset", "trainable params", "size", "metric", "created"]


def _filtered(
    services: Services, variant: str | None, base_model: str | None, dataset: Any, metric: str | None
) -> list[Any]:
    rows = services.adapters.list()
    if variant and variant != ALL:
        rows = [r for r in rows if r.variant == variant]
    if base_model and base_model != ALL:
        rows = [r for r in rows if r.base_model == base_model]
    if dataset not in (None, "", ALL):
        rows = [r for r in rows if r.dataset_id == int(dataset)]
    if metric and metric != ALL:
        rows = [r for r in rows if (r.metrics or {}).get(metric) is not None]
    return rows


def _metric_value(row: Any, metric: str | None) -> str:
    value = (row.metrics or {}).get(metric or DEFAULT_METRIC)
    return f"{value:.4g}" if isinstance(value, int | float) else ""


def filter_choices(services: Services) -> dict[str, Any]:
    """Choices of the four filters, from what the adapters actually have."""
    rows = services.adapters.list()
    metrics = sorted({k for r in rows for k, v in (r.metrics or {}).items() if isinstance(v, int | float)})
    datasets = sorted({r.dataset_id for r in rows if r.dataset_id})
    return {
        "variant": gr.update(choices=[ALL, *sorted({r.variant for r in rows})]),
        "base_model": gr.update(choices=[ALL, *sorted({r.base_model for r in rows})]),
        "dataset": gr.update(choices=[(ALL, ALL), *((f"#{d}", d) for d in datasets)]),
        "metric": gr.update(choices=[ALL, *metrics] if metrics else [ALL]),
    }


def table(services: Services, variant=None, base_model=None, dataset=None, metric=None) -> dict[str, Any]:
    """The filtered table, the selectors' choices and the params-vs-metric scatter."""
    rows = _filtered(services, variant, base_model, dataset, metric)
    shown_metric = metric if metric and metric != ALL else DEFAULT_METRIC
    data = [
        [
            r.id,
            r.name,
            r.variant,
            r.base_model,
            f"#{r.dataset_id}" if r.dataset_id else "",
            f"{r.trainable_params:,}",
            human_bytes(r.size_bytes),
            _metric_value(r, shown_metric),
            ago(r.created_at),
        ]
        for r in rows
    ]
    choices = [(f"#{r.id} {r.name} ({r.variant})", r.id) for r in rows]
    points = [
        {
            "label": f"#{r.id} {r.name}",
            "variant": r.variant,
            "params": r.trainable_params,
            "value": (r.metrics or {}).get(shown_metric),
        }
        for r in rows
    ]
    return {
        "table": gr.update(value=data, headers=HEADERS[:-2] + [shown_metric, "created"]),
        "selected": gr.update(choices=choices),
        "compare": gr.update(choices=choices),
        "scatter": params_metric_scatter(points, shown_metric),
    }


def details(services: Services, selected: int | None) -> dict[str, Any]:
    """Summary, rank-allocation heatmap and final per-module ranks of one adapter."""
    if not selected:
        return {
            "details": "Select an adapter to see its details and rank charts.",
            "heatmap": empty_figure("No adapter selected."),
            "bars": empty_figure("No adapter selected."),
            "diagnostics": empty_figure("No adapter selected."),
            "stages": empty_figure("No adapter selected."),
            "zip_file": gr.update(value=None, visible=False),
            "pruned_btn": gr.update(visible=False),
        }
    row = services.adapters.get(int(selected))
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in (row.metrics or {}).items() if isinstance(v, int | float))
    text = (
        f"**#{row.id} {html.escape(row.name)}** — {row.variant} on `{row.base_model}`"
        + (f", dataset #{row.dataset_id}" if row.dataset_id else "")
        + f"\n\n{row.trainable_params:,} trainable parameters · {human_bytes(row.size_bytes)} · "
        f"{len(row.ranks or {})} adapted modules"
        + (f"\n\n**Training metrics:** {metrics}" if metrics else "")
        + eval_results_markdown(services.adapters.eval_results(row.id))
        + (f"\n\n{'Merged' if row.parents else 'Trained'} by job #{row.source_job_id}" if row.source_job_id else "")
        + (f" from adapters {', '.join(f'#{p}' for p in row.parents)}" if row.parents else "")
    )
    snapshots = services.adapters.rank_history(row.id)
    metric_rows = services.jobs.metrics(row.source_job_id) if row.source_job_id else []
    return {
        "details": text,
        "heatmap": rank_heatmap(snapshots, title=f"Rank allocation of #{row.id} over training"),
        "bars": final_rank_bars(row.ranks or {}, title=f"Final rank per module of #{row.id}"),
        "diagnostics": diagnostics_figure(
            snapshots, title=f"{row.variant} diagnostics of #{row.id} (mean per module type)"
        ),
        "stages": stage_figure(metric_rows),
        "zip_file": gr.update(value=None, visible=False),
        # only LoRAPrune adapters carry pruning masks, hence a pruned model
        "pruned_btn": gr.update(visible=row.variant == "loraprune"),
    }


def compare(services: Services, chosen: list[int] | None) -> dict[str, Any]:
    """Training-loss curves of several adapters, against step and against wall time."""
    series: dict[str, list[Any]] = {}
    for adapter_id in chosen or []:
        row = services.adapters.get(int(adapter_id))
        series[f"#{row.id} {row.name} ({row.variant})"] = (
            services.jobs.metrics(row.source_job_id) if row.source_job_id else []
        )
    return {
        "conv_step": convergence_figure(series, x_axis="step"),
        "conv_time": convergence_figure(series, x_axis="time"),
    }


def make_merged_zip(services: Services, selected: int | None) -> dict[str, Any]:
    """A zip of the base model with the adapter merged into its weights, offered as a download."""
    if not selected:
        raise gr.Error("Select an adapter first.")
    path = services.adapters.merged_model_zip(int(selected))
    return {"zip_file": gr.update(value=str(path), visible=True, label="Merged model zip")}


def make_pruned_zip(services: Services, selected: int | None) -> dict[str, Any]:
    """A zip of a LoRAPrune adapter's physically pruned model (heads and channels removed), offered as a download."""
    if not selected:
        raise gr.Error("Select an adapter first.")
    path = services.adapters.pruned_model_zip(int(selected))
    return {"zip_file": gr.update(value=str(path), visible=True, label="Pruned model zip")}


def make_zip(services: Services, selected: int | None) -> dict[str, Any]:
    """A zip of the adapter's PEFT directory, offered as a download."""
    if not selected:
        raise gr.Error("Select an adapter first.")
    path = services.adapters.zip(int(selected))
    return {"zip_file": gr.update(value=str(path), visible=True, label="Adapter zip")}


def delete(services: Services, selected: int | None, **filters: Any) -> dict[str, Any]:
    """Delete the selected adapter (the browser asked for confirmation first)."""
    if not selected:
        return {}
    services.adapters.delete(int(selected))
    gr.Info(f"Deleted adapter #{selected}.")
    return {**table(services, **filters), "selected": gr.update(value=None), **details(services, None)}


def build(services: Services, tab: gr.Tab, demo: gr.Blocks) -> None:
    """Lay out the tab and wire its events."""
    c: dict[str, Any] = {}
    with gr.Row():
        c["variant"] = gr.Dropdown(label="Variant", choices=[ALL], value=ALL, elem_id="adapters-filter-variant")
        c["base_model"] = gr.Dropdown(label="Base model", choices=[ALL], value=ALL, elem_id="adapters-filter-base")
        c["dataset"] = gr.Dropdown(label="Dataset", choices=[ALL], value=ALL, elem_id="adapters-filter-dataset")
        c["metric"] = gr.Dropdown(
            label="Metric",
            choices=[ALL],
            value=ALL,
            elem_id="adapters-filter-metric",
            info="Show, sort and plot by this metric (only adapters that have it).",
        )
    c["table"] = gr.Dataframe(headers=HEADERS, interactive=False, elem_id="adapters-table", max_height=300)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=320):
            c["selected"] = gr.Dropdown(label="Adapter", choices=[], value=None, elem_id="adapters-selected")
            c["details"] = gr.Markdown(
                "Select an adapter to see its details and rank charts.", elem_id="adapters-details"
            )
            with gr.Row():
                c["zip_btn"] = gr.Button("Download as zip", elem_id="adapters-zip-btn")
                c["merged_btn"] = gr.Button("Download merged model", elem_id="adapters-merged-btn")
                c["pruned_btn"] = gr.Button("Download pruned model", elem_id="adapters-pruned-btn", visible=False)
                c["delete_btn"] = gr.Button("Delete", variant="stop", elem_id="adapters-delete")
            c["zip_file"] = gr.File(label="Adapter zip", visible=False, interactive=False, elem_id="adapters-zip")
        with gr.Column(scale=4, min_width=320):
            c["scatter"] = gr.Plot(label="Parameters vs metric", elem_id="adapters-scatter")
    with gr.Row(equal_height=False):
        c["heatmap"] = gr.Plot(label="Rank allocation", elem_id="adapters-rank-heatmap")
        c["bars"] = gr.Plot(label="Final ranks", elem_id="adapters-rank-bars")
    with gr.Row(equal_height=False):
        c["diagnostics"] = gr.Plot(label="Per-module diagnostics", elem_id="adapters-diagnostics")
        c["stages"] = gr.Plot(label="Stages", elem_id="adapters-stages")
    gr.Markdown("### Compare convergence")
    c["compare"] = gr.Dropdown(label="Adapters to compare", choices=[], multiselect=True, elem_id="adapters-compare")
    with gr.Row(equal_height=False):
        c["conv_step"] = gr.Plot(label="Loss vs step", elem_id="adapters-conv-step")
        c["conv_time"] = gr.Plot(label="Loss vs wall time", elem_id="adapters-conv-time")

    filters = {k: c[k] for k in ("variant", "base_model", "dataset", "metric")}
    table_out = {k: c[k] for k in ("table", "selected", "compare", "scatter")}
    details_out = {k: c[k] for k in ("details", "heatmap", "bars", "diagnostics", "stages", "zip_file", "pruned_btn")}
    for widget in filters.values():
        bind(widget.input, partial(table, services), filters, table_out)

    def on_tab(**current: Any) -> dict[str, Any]:
        return {**filter_choices(services), **table(services, **current)}

    bind(tab.select, on_tab, filters, table_out | filters)
    bind(c["selected"].input, partial(details, services), {"selected": c["selected"]}, details_out)
    bind(
        c["compare"].input,
        partial(compare, services),
        {"chosen": c["compare"]},
        {k: c[k] for k in ("conv_step", "conv_time")},
    )
    bind(c["zip_btn"].click, partial(make_zip, services), {"selected": c["selected"]}, {"zip_file": c["zip_file"]})
    bind(
        c["merged_btn"].click,
        partial(make_merged_zip, services),
        {"selected": c["selected"]},
        {"zip_file": c["zip_file"]},
    )
    bind(
        c["pruned_btn"].click,
        partial(make_pruned_zip, services),
        {"selected": c["selected"]},
        {"zip_file": c["zip_file"]},
    )
    bind(
        c["delete_btn"].click,
        partial(delete, services),
        {"selected": c["selected"]} | filters,
        table_out | details_out,
        js="(id, ...rest) => [(id && confirm('Delete adapter #' + id + ' and its files?')) ? id : null, ...rest]",
    )
