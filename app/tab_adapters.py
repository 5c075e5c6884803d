"""Adapters tab: filterable table, details, rank charts, convergence overlay, params-vs-metric, downloads, delete.

Downloads are real download buttons, each with the SHA-256 of its file shown beside it. The
adapter's zip is small and made when the adapter is selected, so one click on the button
downloads it; the merged and pruned models (the whole base model, hundreds of MB) are made
when their button is clicked, and the browser then downloads them without a second click.
"""

from __future__ import annotations

import html
from functools import partial
from typing import Any

import gradio as gr

from app.tab_evaluate import eval_results_markdown
from app.ui import ago, bind, human_bytes
from studio.charts import (
    TRAIN_LOSS_NAMES,
    VALIDATION_LOSS_NAMES,
    convergence_figure,
    empty_figure,
    final_rank_bars,
    params_metric_scatter,
    rank_heatmap,
)
from studio.charts_diagnostics import diagnostics_figure, stage_figure
from studio.errors import NotFoundError, StudioError
from studio.schema import AdapterFilters
from studio.services.container import Services
from studio.services.downloads import archive_sha256

TITLE = "Adapters"
ELEM_ID = "tab-adapters"
ALL = "All"
DEFAULT_METRIC = "eval_loss"
# Runs in the browser after a model zip was made: download the file the button now holds.
DOWNLOAD_NOW_JS = """(file) => {
    if (file && file.url) {
        const link = document.createElement('a');
        link.href = file.url;
        link.download = file.orig_name || 'download.zip';
        document.body.appendChild(link);
        link.click();
        link.remove();
    }
    return [];
}"""

LOSS_NAMES = TRAIN_LOSS_NAMES + VALIDATION_LOSS_NAMES
HEADERS = ["id", "name", "variant", "base model", "dataset", "trainable params", "size", "metric", "created"]


PAGE_SIZE = 50
SCATTER_POINTS = 1000
SORTS = [
    ("Newest first", "newest"),
    ("Oldest first", "oldest"),
    ("Name", "name"),
    ("Most parameters", "params"),
    ("Largest", "size"),
    ("Metric, lowest first", "metric_asc"),
    ("Metric, highest first", "metric_desc"),
]


def _chosen(value: Any) -> Any:
    """A filter's value, or None when it is 'All' or empty."""
    return None if value in (None, "", ALL) else value


def query_of(variant: Any = None, base_model: Any = None, dataset: Any = None, metric: Any = None) -> AdapterFilters:
    """The filters of the four dropdowns as the registry's query."""
    dataset = _chosen(dataset)
    return AdapterFilters(
        variant=_chosen(variant),
        base_model=_chosen(base_model),
        dataset_id=int(dataset) if dataset is not None else None,
        metric=_chosen(metric),
    )


def _metric_value(row: Any, metric: str | None) -> str:
    value = (row.metrics or {}).get(metric or DEFAULT_METRIC)
    return f"{value:.4g}" if isinstance(value, int | float) else ""


def adapter_label(row: Any) -> str:
    return f"#{row.id} {row.name} ({row.variant})"


def filter_choices(services: Services) -> dict[str, Any]:
    """Choices of the four filters, from what the adapters actually have (DISTINCT in the database)."""
    found = services.adapters.filter_choices()
    return {
        "variant": gr.update(choices=[ALL, *found["variant"]]),
        "base_model": gr.update(choices=[ALL, *found["base_model"]]),
        "dataset": gr.update(choices=[(ALL, ALL), *((f"#{d}", d) for d in found["dataset_id"])]),
        "metric": gr.update(choices=[ALL, *found["metric"]]),
    }


def _page_number(page: Any, total: int) -> int:
    pages = max(1, -(-total // PAGE_SIZE))
    try:
        number = int(page or 1)
    except (TypeError, ValueError):
        number = 1
    return min(max(1, number), pages)


def table(
    services: Services,
    variant=None,
    base_model=None,
    dataset=None,
    metric=None,
    search: str | None = None,
    sort: str | None = None,
    page: Any = 1,
    chosen: list[int] | None = None,
) -> dict[str, Any]:
    """One page of the filtered, searched and sorted table, the adapter pickers' choices and the scatter.

    The database does the filtering, sorting and paging; the pickers offer the page's
    adapters (plus those already picked) and the scatter plots a sample of at most
    SCATTER_POINTS adapters.
    """
    filters = query_of(variant, base_model, dataset, metric)
    sort = sort or "newest"
    if sort.startswith("metric") and not filters.metric:
        filters = filters.model_copy(update={"metric": DEFAULT_METRIC})
    shown_metric = filters.metric or DEFAULT_METRIC
    number = _page_number(page, 10**12)

    def view_of(number: int) -> Any:
        offset = (number - 1) * PAGE_SIZE
        return services.adapters.view(filters, search, sort, offset, PAGE_SIZE, shown_metric, SCATTER_POINTS)

    view = view_of(number)
    if not view.rows and number > 1:  # past the end (rows were deleted or the filter narrowed): the last page
        number = _page_number(number, view.total)
        view = view_of(number)
    rows, total = view.rows, view.total
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
    choices = [(adapter_label(r), r.id) for r in rows]
    kept = [c for c in _labelled(services, chosen or []) if c[1] not in {r.id for r in rows}]
    samples, population = view.points, view.population
    # The task splits the chart: a classifier's loss and a text generator's are not comparable.
    tasks = services.adapters.tasks([i for i, *_ in samples])
    points = [
        {"label": f"#{i} {name}", "variant": v, "params": params, "value": value, "task": tasks.get(i)}
        for i, name, v, params, value in samples
    ]
    title = f"Trainable parameters vs {shown_metric}"
    if population > len(samples):
        title += f" (a sample of {len(samples):,} of {population:,} adapters)"
    first = (number - 1) * PAGE_SIZE + 1
    info = f"Adapters {first:,}–{first + len(rows) - 1:,} of {total:,}" if rows else "No adapter matches."
    return {
        "table": gr.update(value=data, headers=HEADERS[:-2] + [shown_metric, "created"]),
        "selected": gr.update(choices=choices),
        "compare": gr.update(choices=kept + choices),
        "scatter": params_metric_scatter(points, shown_metric, title=title),
        "page": gr.update(value=number, maximum=max(1, -(-total // PAGE_SIZE))),
        "page_info": info,
    }


def _labelled(services: Services, ids: list[int]) -> list[tuple[str, int]]:
    """Labels of adapters picked on another page (they stay offered); deleted ones drop out."""
    out = []
    for adapter_id in ids:
        try:
            out.append((adapter_label(services.adapters.get(int(adapter_id))), int(adapter_id)))
        except NotFoundError:
            continue
    return out


MADE_BY_KIND = {
    "merge": "Merged",
    "mixture": "Mixed",
    "transfer": "Transferred",
    "generate": "Generated",
    "generator": "Built",
    "personalise": "Personalised",
    "federated": "Trained across federated clients",
}


def _made_how(services: Services, row: Any) -> str:
    """How the adapter came to be, from the kind of the job that made it ("Trained" when that job is gone)."""
    try:
        kind = services.registry.get_job(row.source_job_id).kind
    except StudioError:
        kind = None
    return MADE_BY_KIND.get(kind, "Trained")


def details(services: Services, selected: int | None) -> dict[str, Any]:
    """Summary, rank-allocation heatmap and final per-module ranks of one adapter."""
    if not selected:
        return {
            "details": "Select an adapter to see its details and rank charts.",
            "heatmap": empty_figure("No adapter selected."),
            "bars": empty_figure("No adapter selected."),
            "diagnostics": empty_figure("No adapter selected."),
            "stages": empty_figure("No adapter selected."),
            "zip_btn": gr.update(value=None, interactive=False),
            "zip_sha": "",
            "model_sha": "",
            # Greyed out like the zip button: with nothing selected a click could only answer with an error.
            "merged_btn": gr.update(value=None, interactive=False),
            "delete_btn": gr.update(interactive=False),
            "pruned_btn": gr.update(value=None, visible=False),
            "mixture_box": gr.update(visible=False),
            "mixture_usage": empty_figure("No adapter selected."),
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
        + (f"\n\n{_made_how(services, row)} by job #{row.source_job_id}" if row.source_job_id else "")
        + (f" from adapters {', '.join(f'#{p}' for p in row.parents)}" if row.parents else "")
    )
    snapshots = services.adapters.rank_history(row.id)
    metric_rows = services.jobs.curves(row.source_job_id) if row.source_job_id else []
    return {
        "details": text,
        "heatmap": rank_heatmap(snapshots, title=f"Rank allocation of #{row.id} over training"),
        "bars": final_rank_bars(row.ranks or {}, title=f"Final rank per module of #{row.id}"),
        "diagnostics": diagnostics_figure(
            snapshots, title=f"{row.variant} diagnostics of #{row.id} (mean per module type)"
        ),
        "stages": stage_figure(metric_rows),
        **adapter_download(services, row.id),
        "model_sha": "",
        "merged_btn": gr.update(value=None, interactive=True),
        "delete_btn": gr.update(interactive=True),
        # only LoRAPrune adapters carry pruning masks, hence a pruned model
        "pruned_btn": gr.update(value=None, visible=row.variant == "loraprune"),
        **mixture_details(row),
    }


def mixture_details(row: Any) -> dict[str, Any]:
    """The Mixture accordion: shown for MeteoRA mixtures only, with the stored expert usage per task."""
    from studio.composition.mixture_checks import is_mixture
    from studio.composition.mixture_views import usage_figure

    if not is_mixture(row):
        return {"mixture_box": gr.update(visible=False), "mixture_usage": empty_figure("Not a mixture.")}
    try:
        usage = usage_figure(row)
    except StudioError as exc:  # a bundle that is gone or unreadable: say so in the chart
        usage = empty_figure(str(exc))
    return {"mixture_box": gr.update(visible=True), "mixture_usage": usage}


def mixture_routing(services: Services, selected: int | None, prompt: str) -> dict[str, Any]:
    """The routing heatmap of ``prompt`` on the selected mixture (loaded in the playground's mixture pool)."""
    from studio.composition.mixture_views import routing_figure

    if not selected:
        return {"mixture_heatmap": empty_figure("Select a mixture adapter first.")}
    row = services.adapters.get(int(selected))
    return {"mixture_heatmap": routing_figure(services.playground.mixtures, row, prompt)}


def checksum_line(path: Any, what: str) -> str:
    """The line shown beside a download: file name, size and SHA-256 (to check the file that arrived)."""
    from pathlib import Path

    path = Path(path)
    return f"{what} `{path.name}` · {human_bytes(path.stat().st_size)} · SHA-256 `{archive_sha256(path)}`"


def adapter_download(services: Services, adapter_id: int) -> dict[str, Any]:
    """The adapter's zip, made now so that one click on the download button delivers it."""
    try:
        path = services.adapters.zip(adapter_id)
    except StudioError as exc:  # e.g. its files were removed from disk: say so instead of a dead button
        return {"zip_btn": gr.update(value=None, interactive=False), "zip_sha": f"No download: {exc}"}
    return {"zip_btn": gr.update(value=str(path), interactive=True), "zip_sha": checksum_line(path, "Adapter zip")}


def compare(services: Services, chosen: list[int] | None) -> dict[str, Any]:
    """Training-loss curves of several adapters, against step and against wall time."""
    series: dict[str, list[Any]] = {}
    for adapter_id in chosen or []:
        row = services.adapters.get(int(adapter_id))
        series[f"#{row.id} {row.name} ({row.variant})"] = (
            services.jobs.curves(row.source_job_id, list(LOSS_NAMES)) if row.source_job_id else []
        )
    return {
        "conv_step": convergence_figure(series, x_axis="step"),
        "conv_time": convergence_figure(series, x_axis="time"),
    }


def make_merged_zip(services: Services, selected: int | None) -> dict[str, Any]:
    """A zip of the base model with the adapter merged into its weights, put on the button for the browser to fetch."""
    if not selected:
        raise gr.Error("Select an adapter first.")
    path = services.adapters.merged_model_zip(int(selected))
    return {"merged_btn": gr.update(value=str(path)), "model_sha": checksum_line(path, "Merged model zip")}


def make_pruned_zip(services: Services, selected: int | None) -> dict[str, Any]:
    """A zip of a LoRAPrune adapter's physically pruned model (heads and channels removed), for the browser to fetch."""
    if not selected:
        raise gr.Error("Select an adapter first.")
    path = services.adapters.pruned_model_zip(int(selected))
    return {"pruned_btn": gr.update(value=str(path)), "model_sha": checksum_line(path, "Pruned model zip")}


def delete(services: Services, selected: int | None, **filters: Any) -> dict[str, Any]:
    """Delete the selected adapter (the browser asked for confirmation first)."""
    if not selected:
        return {}
    services.adapters.delete(int(selected))
    gr.Info(f"Deleted adapter #{selected}.")
    return {**table(services, **filters), "selected": gr.update(value=None), **details(services, None)}


def turn_page(services: Services, step: int, page: Any, **current: Any) -> dict[str, Any]:
    """The previous (``step`` -1) or next (+1) page of the table."""
    return table(services, page=_page_number(page, 10**12) + step, **current)


def build(services: Services, tab: gr.Tab, demo: gr.Blocks) -> None:
    """Lay out the tab and wire its events."""
    c: dict[str, Any] = {}
    with gr.Row():
        c["search"] = gr.Textbox(
            label="Search",
            placeholder="name or #id",
            elem_id="adapters-search",
            info="Press Enter: the table and the adapter pickers show what matches.",
        )
        c["sort"] = gr.Dropdown(label="Sort", choices=SORTS, value="newest", elem_id="adapters-sort")
    with gr.Row():
        c["variant"] = gr.Dropdown(
            label="Variant", choices=[ALL], value=ALL, filterable=True, elem_id="adapters-filter-variant"
        )
        c["base_model"] = gr.Dropdown(
            label="Base model", choices=[ALL], value=ALL, filterable=True, elem_id="adapters-filter-base"
        )
        c["dataset"] = gr.Dropdown(
            label="Dataset", choices=[ALL], value=ALL, filterable=True, elem_id="adapters-filter-dataset"
        )
        c["metric"] = gr.Dropdown(
            label="Metric",
            choices=[ALL],
            value=ALL,
            filterable=True,
            elem_id="adapters-filter-metric",
            info="Show, sort and plot by this metric (only adapters that have it).",
        )
    c["table"] = gr.Dataframe(headers=HEADERS, interactive=False, elem_id="adapters-table", max_height=300)
    with gr.Row():
        c["prev_btn"] = gr.Button("◀ Previous", elem_id="adapters-prev", scale=1, min_width=110)
        c["page"] = gr.Number(label="Page", value=1, minimum=1, precision=0, elem_id="adapters-page", scale=1)
        c["next_btn"] = gr.Button("Next ▶", elem_id="adapters-next", scale=1, min_width=110)
        c["page_info"] = gr.Markdown(elem_id="adapters-page-info")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=320):
            c["selected"] = gr.Dropdown(
                label="Adapter",
                choices=[],
                value=None,
                filterable=True,
                elem_id="adapters-selected",
                info=f"The adapters of this page (at most {PAGE_SIZE}); search above to find others.",
            )
            c["details"] = gr.Markdown(
                "Select an adapter to see its details and rank charts.", elem_id="adapters-details"
            )
            with gr.Row():
                c["zip_btn"] = gr.DownloadButton("Download as zip", interactive=False, elem_id="adapters-zip-btn")
                c["merged_btn"] = gr.DownloadButton(
                    "Download merged model", interactive=False, elem_id="adapters-merged-btn"
                )
                c["pruned_btn"] = gr.DownloadButton(
                    "Download pruned model", elem_id="adapters-pruned-btn", visible=False
                )
                c["delete_btn"] = gr.Button("Delete", variant="stop", interactive=False, elem_id="adapters-delete")
            c["zip_sha"] = gr.Markdown("", elem_id="adapters-zip-sha256")
            c["model_sha"] = gr.Markdown("", elem_id="adapters-model-sha256")
        with gr.Column(scale=4, min_width=320):
            c["scatter"] = gr.Plot(label="Parameters vs metric", elem_id="adapters-scatter")
    with gr.Row(equal_height=False):
        c["heatmap"] = gr.Plot(label="Rank allocation", elem_id="adapters-rank-heatmap")
        c["bars"] = gr.Plot(label="Final ranks", elem_id="adapters-rank-bars")
    with gr.Row(equal_height=False):
        c["diagnostics"] = gr.Plot(label="Per-module diagnostics", elem_id="adapters-diagnostics")
        c["stages"] = gr.Plot(label="Stages", elem_id="adapters-stages")
    with gr.Accordion("Mixture routing (MeteoRA)", open=True, visible=False, elem_id="adapters-mixture") as box:
        c["mixture_box"] = box
        with gr.Row():
            c["mixture_prompt"] = gr.Textbox(
                label="Prompt",
                placeholder="Text to route, e.g. a prompt that mixes two tasks",
                elem_id="adapters-mixture-prompt",
                info="Shows which expert each token chose in every gated layer (top-1 choice).",
                scale=4,
            )
            c["mixture_btn"] = gr.Button("Show routing", elem_id="adapters-mixture-btn", scale=1)
        with gr.Row(equal_height=False):
            c["mixture_heatmap"] = gr.Plot(
                label="Chosen expert per token and layer", elem_id="adapters-mixture-heatmap"
            )
            c["mixture_usage"] = gr.Plot(
                label="Expert usage per task (held-out rows)", elem_id="adapters-mixture-usage"
            )
    gr.Markdown("### Compare convergence")
    c["compare"] = gr.Dropdown(
        label="Adapters to compare",
        choices=[],
        multiselect=True,
        filterable=True,
        elem_id="adapters-compare",
        info="Offers this page's adapters; picks stay when you page or search for more.",
    )
    with gr.Row(equal_height=False):
        c["conv_step"] = gr.Plot(label="Loss vs step", elem_id="adapters-conv-step")
        c["conv_time"] = gr.Plot(label="Loss vs wall time", elem_id="adapters-conv-time")

    filters = {k: c[k] for k in ("variant", "base_model", "dataset", "metric", "search", "sort")}
    table_in = filters | {"chosen": c["compare"]}
    table_out = {k: c[k] for k in ("table", "selected", "compare", "scatter", "page", "page_info")}
    details_out = {
        k: c[k]
        for k in ("details", "heatmap", "bars", "diagnostics", "stages")
        + ("zip_btn", "zip_sha", "model_sha", "merged_btn", "pruned_btn", "delete_btn", "mixture_box", "mixture_usage")
    }
    # A new filter, search or sort starts again at page 1 (table's default).
    for key in ("variant", "base_model", "dataset", "metric", "sort"):
        bind(c[key].input, partial(table, services), table_in, table_out)
    bind(c["search"].submit, partial(table, services), table_in, table_out)
    bind(c["page"].submit, partial(table, services), table_in | {"page": c["page"]}, table_out)
    for button, step in ((c["prev_btn"], -1), (c["next_btn"], 1)):
        bind(button.click, partial(turn_page, services, step), table_in | {"page": c["page"]}, table_out)

    def on_tab(**current: Any) -> dict[str, Any]:
        return {**filter_choices(services), **table(services, **current)}

    bind(
        tab.select,
        on_tab,
        table_in | {"page": c["page"]},
        table_out | {k: c[k] for k in ("variant", "base_model", "dataset", "metric")},
    )
    bind(c["selected"].input, partial(details, services), {"selected": c["selected"]}, details_out)
    routing_in = {"selected": c["selected"], "prompt": c["mixture_prompt"]}
    for event in (c["mixture_btn"].click, c["mixture_prompt"].submit):
        bind(event, partial(mixture_routing, services), routing_in, {"mixture_heatmap": c["mixture_heatmap"]})
    bind(
        c["compare"].input,
        partial(compare, services),
        {"chosen": c["compare"]},
        {k: c[k] for k in ("conv_step", "conv_time")},
    )
    # The adapter zip is on its button already (made on selection): the browser downloads it on click.
    for kind, make in (("merged", make_merged_zip), ("pruned", make_pruned_zip)):
        button = c[f"{kind}_btn"]
        # An empty button only reports the click: make the zip, then have the browser fetch it, then
        # empty the button again so that the next click makes a fresh zip instead of downloading twice.
        made = bind(
            button.click,
            partial(make, services),
            {"selected": c["selected"]},
            {f"{kind}_btn": button, "model_sha": c["model_sha"]},
        )
        made.success(None, inputs=[button], outputs=None, js=DOWNLOAD_NOW_JS).then(
            lambda: gr.update(value=None), inputs=None, outputs=[button]
        )
    bind(
        c["delete_btn"].click,
        partial(delete, services),
        {"selected": c["selected"]} | table_in | {"page": c["page"]},
        table_out | details_out,
        js="(id, ...rest) => [(id && confirm('Delete adapter #' + id + ' and its files?')) ? id : null, ...rest]",
    )
