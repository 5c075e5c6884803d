"""Compose tab, MeteoRA section: experts (one adapter + one labelled dataset per row), routing settings from
``MixtureSettings``, submit a ``mixture`` job; for a finished mixture, its routing heatmap and expert usage.

The charts are :mod:`studio.composition.mixture_views`' (the Adapters tab shows the same ones).
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from pydantic import ValidationError

from app.compose_errors import FormErrors, field_errors, form_error_updates, widget_error
from app.forms import SchemaForm
from app.tab_datasets import dataset_choices
from app.ui import PICKER_LIMIT, bind, bind_submit, latest_adapters, new_submission_token, queue_wait_sentence
from studio.charts import empty_figure
from studio.schema import AdapterFilters, MixtureRequest, MixtureSettings
from studio.services.container import Services

MAX_ROWS = 8  # expert rows the form offers (the schema takes up to 16: `studio mix` for more)
TOP_FIELDS = ("name", "steps", "seed", "validation_fraction")
SKIP_SETTINGS = ("max_steps", "seed")  # the request's steps and seed set them (one source of truth)
NOT_EXPERTS = ("mixture", "reclora", "icm_generator")  # bundles, not LoRA adapters a gated layer can hold
ADAPTER_INFO = "A LoRA adapter; every expert must be of the same base model."
DATASET_INFO = "Rows of the task this expert was trained for (they label the routing)."
NEEDS_FIXING = "⚠ Some settings need fixing: see the highlighted fields."
PICK_A_MIXTURE = "⚠ Pick a mixture first: choose one under **Mixture** (a finished mixture job adds it there)."


def expert_choices(services: Services) -> list[tuple[str, int]]:
    """The newest LoRA adapters that can be experts, labelled with their base model."""
    rows = [r for r in latest_adapters(services) if r.variant not in NOT_EXPERTS]
    return [(f"#{r.id} {r.name} ({r.variant}, {r.base_model})", r.id) for r in rows]


def mixture_choices(services: Services) -> list[tuple[str, int]]:
    """The newest registered mixtures."""
    rows, _ = services.adapters.page(AdapterFilters(variant="mixture"), limit=PICKER_LIMIT)
    return [(f"#{r.id} {r.name} ({len(r.parents or [])} experts)", r.id) for r in rows]


def build_mixture_request(
    experts: list[tuple[Any, Any]], top: dict[str, Any], settings: dict[str, Any]
) -> MixtureRequest:
    """Validate the form as the worker will; FormErrors keys every problem by its widget.

    ``experts``: ``(adapter id, dataset id)`` of each shown row, in order; ``top``: name, steps,
    seed, validation fraction; ``settings``: the MixtureSettings fields.
    """
    errors: dict[str, str] = {}
    adapter_ids: list[int] = []
    dataset_ids: list[int] = []
    for j, (adapter, dataset) in enumerate(experts):
        if not adapter:
            errors[f"expert.{j}.adapter"] = "Choose this expert's adapter."
        elif int(adapter) in adapter_ids:
            errors[f"expert.{j}.adapter"] = f"Already expert {adapter_ids.index(int(adapter)) + 1}: pick another."
        if not dataset:
            errors[f"expert.{j}.dataset"] = "Choose the dataset of this expert's task."
        adapter_ids.append(int(adapter or 0))
        dataset_ids.append(int(dataset or 0))
    data = {
        "adapter_ids": [a or j + 1000 for j, a in enumerate(adapter_ids)],  # placeholders: check the rest too
        "dataset_ids": [d or 1 for d in dataset_ids],
        "settings": settings,
        **top,
    }
    data["name"] = (data.get("name") or "").strip() or None
    try:
        request = MixtureRequest.model_validate(data)
    except ValidationError as exc:
        found = field_errors(exc)
        if "adapter_ids" in found and not any(k.startswith("expert.") for k in errors):
            errors["expert.0.adapter"] = found.pop("adapter_ids")  # e.g. fewer than 2 experts
        for key, message in found.items():
            if key not in ("adapter_ids", "dataset_ids"):
                errors.setdefault(key, message)
        request = None
    if errors or request is None:
        raise FormErrors(errors or {"request": "invalid"})
    return request


def submit_mixture(services: Services, request: MixtureRequest, submission_token: str | None = None) -> str:
    """Queue the job (the job service refuses experts of different bases or non-LoRA ones); a confirmation line."""
    job = services.jobs.submit(request, submission_token=submission_token)
    experts = ", ".join(f"#{a} on dataset #{d}" for a, d in zip(request.adapter_ids, request.dataset_ids, strict=True))
    return (
        f"Queued mixture job #{job.id} ({experts}); follow it in the Jobs tab, then pick the mixture below."
        f"{queue_wait_sentence(job)}"
    )


def mixture_charts(services: Services, mixture_id: Any, prompt: str | None) -> dict[str, Any]:
    """The routing heatmap of ``prompt`` (empty prompt: an empty chart) and the stored usage per task."""
    from studio.composition.mixture_views import routing_figure, usage_figure

    if not mixture_id:
        empty = empty_figure("Pick a mixture first.")
        return {"heatmap": empty, "usage": empty}
    row = services.adapters.get(int(mixture_id))
    return {"heatmap": routing_figure(services.playground.mixtures, row, prompt or ""), "usage": usage_figure(row)}


def routing_view(services: Services, mixture_id: Any, prompt: str | None) -> dict[str, Any]:
    """The routing charts and the status line that goes with them (Show routing, or a mixture picked).

    The status is always written: left alone, an earlier "⚠ Some settings need fixing" from the form
    above stayed up beside charts it has nothing to do with.
    """
    status = "" if mixture_id else PICK_A_MIXTURE
    return {**mixture_charts(services, mixture_id, prompt), "status": status}


def build_section(services: Services, tab: gr.Tab) -> None:
    """Lay out the MeteoRA section and wire its events."""
    c: dict[str, Any] = {}
    gr.Markdown(
        "### Mixture of adapters (MeteoRA)\n"
        "Embed several LoRA adapters of **one base model** as experts and train a small router in every layer, so "
        "the model picks the expert(s) for each token by itself. Give each expert the dataset of the task it was "
        "trained for: its rows teach the router which expert belongs to which task. The experts stay frozen "
        "unless you ask otherwise. The result chats in the Playground and is served by `/v1` like any adapter.",
        elem_id="mix-intro",
    )
    c["count"] = gr.Slider(2, MAX_ROWS, value=2, step=1, label="Experts", elem_id="mix-count")
    for j in range(MAX_ROWS):
        with gr.Row(visible=j < 2) as c[f"row_{j}"]:
            c[f"adapter_{j}"] = gr.Dropdown(
                label=f"Expert {j + 1}: adapter",
                choices=[],
                filterable=True,
                info=ADAPTER_INFO,
                elem_id=f"mix-adapter-{j}",
            )
            c[f"dataset_{j}"] = gr.Dropdown(
                label=f"Expert {j + 1}: task dataset", choices=[], info=DATASET_INFO, elem_id=f"mix-dataset-{j}"
            )
    with gr.Row(elem_classes=["form-grid"]):
        top = SchemaForm(MixtureRequest.model_json_schema(), "mix", only=TOP_FIELDS)
    with (
        gr.Accordion("Routing and router training", open=False, elem_id="mix-settings"),
        gr.Row(elem_classes=["form-grid"]),
    ):
        settings = SchemaForm(MixtureSettings.model_json_schema(), "mix-set", skip=SKIP_SETTINGS)
    c["submit"] = gr.Button("Build the mixture", variant="primary", elem_id="mix-submit")
    c["status"] = gr.Markdown(elem_id="mix-status")
    c["submission_token"] = gr.State(new_submission_token)
    gr.Markdown("#### Routing of a finished mixture")
    with gr.Row():
        c["mixture"] = gr.Dropdown(label="Mixture", choices=[], elem_id="mix-mixture", scale=2)
        c["prompt"] = gr.Textbox(
            label="Prompt",
            placeholder="e.g. a prompt that mixes two of the tasks",
            elem_id="mix-prompt",
            scale=4,
        )
        c["route_btn"] = gr.Button("Show routing", elem_id="mix-route", scale=1)
    with gr.Row(equal_height=False):
        c["heatmap"] = gr.Plot(label="Chosen expert per token and layer", elem_id="mix-heatmap")
        c["usage"] = gr.Plot(label="Expert usage per task (held-out rows)", elem_id="mix-usage")

    rows_in = {f"adapter_{j}": c[f"adapter_{j}"] for j in range(MAX_ROWS)}
    rows_in |= {f"dataset_{j}": c[f"dataset_{j}"] for j in range(MAX_ROWS)}
    top_in = {f"top.{n}": w for n, w in top.widgets.items()}
    settings_in = {f"settings.{n}": w for n, w in settings.widgets.items()}
    form_in = {"count": c["count"]} | rows_in | top_in | settings_in

    def feedback(errors: dict[str, str], count: int) -> dict[str, Any]:
        out = form_error_updates(top, "top", errors) | form_error_updates(settings, "settings", errors, "settings.")
        for j in range(MAX_ROWS):
            shown = j < count
            out[f"adapter_{j}"] = widget_error(shown and errors.get(f"expert.{j}.adapter"), ADAPTER_INFO)
            out[f"dataset_{j}"] = widget_error(shown and errors.get(f"expert.{j}.dataset"), DATASET_INFO)
        return out

    def on_submit(count: int, submission_token: str | None = None, **raw: Any) -> dict[str, Any]:
        count = int(count)
        experts = [(raw[f"adapter_{j}"], raw[f"dataset_{j}"]) for j in range(count)]
        try:
            request = build_mixture_request(
                experts,
                top.values([raw[f"top.{n}"] for n in top.names]),
                settings.values([raw[f"settings.{n}"] for n in settings.names]),
            )
        except FormErrors as exc:
            return {"status": NEEDS_FIXING, **feedback(exc.errors, count)}
        line = submit_mixture(services, request, submission_token)
        return {"status": f"✓ {line}", "mixture": gr.update(choices=mixture_choices(services)), **feedback({}, count)}

    def on_count(count: int) -> dict[str, Any]:
        return {f"row_{j}": gr.update(visible=j < int(count)) for j in range(MAX_ROWS)}

    def on_mixture(mixture: Any) -> dict[str, Any]:
        return routing_view(services, mixture, "")

    def on_route(mixture: Any, prompt: str | None) -> dict[str, Any]:
        return routing_view(services, mixture, prompt)

    def on_tab() -> dict[str, Any]:
        adapters, datasets = expert_choices(services), dataset_choices(services)
        out = {f"adapter_{j}": gr.update(choices=adapters) for j in range(MAX_ROWS)}
        out |= {f"dataset_{j}": gr.update(choices=datasets) for j in range(MAX_ROWS)}
        return out | {"mixture": gr.update(choices=mixture_choices(services))}

    feedback_out = rows_in | top_in | settings_in
    submit_out = {"status": c["status"], "mixture": c["mixture"]} | feedback_out
    bind_submit(c["submit"], on_submit, form_in, submit_out, "status", c["submission_token"])
    bind(c["count"].change, on_count, {"count": c["count"]}, {f"row_{j}": c[f"row_{j}"] for j in range(MAX_ROWS)})
    charts = {"heatmap": c["heatmap"], "usage": c["usage"]}
    bind(c["mixture"].change, on_mixture, {"mixture": c["mixture"]}, charts | {"status": c["status"]}, "status")
    for event in (c["route_btn"].click, c["prompt"].submit):
        bind(
            event,
            on_route,
            {"mixture": c["mixture"], "prompt": c["prompt"]},
            charts | {"status": c["status"]},
            "status",
        )
    bind(tab.select, on_tab, {}, {k: c[k] for k in rows_in} | {"mixture": c["mixture"]})
