"""Evaluate tab: run an eval job on an adapter (or the bare base) and list the results.

Only shown when this installation has the eval job kind (``studio.evaluation.job``).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.forms import SchemaForm
from app.tab_datasets import dataset_choices
from app.ui import bind, latest_adapters, module_installed, queue_wait_sentence
from studio.schema import EvalRequest
from studio.services.container import Services

TITLE = "Evaluate"
ELEM_ID = "tab-evaluate"
FORM_FIELDS = ("metrics", "max_examples", "max_new_tokens", "seed")
BASE_ONLY = 0


def available() -> bool:
    """True when the eval job kind exists in this installation (no dead buttons otherwise)."""
    return module_installed("studio.evaluation.job")


def adapter_choices(services: Services) -> list[tuple[str, int]]:
    """The bare base model first, then the newest adapters."""
    rows = latest_adapters(services)
    return [("No adapter (base model)", BASE_ONLY), *((f"#{r.id} {r.name} ({r.variant})", r.id) for r in rows)]


def results_rows(services: Services) -> list[list[Any]]:
    """Recent eval jobs with their status and scores."""
    out = []
    for job in services.jobs.list(kind="eval", limit=50):
        metrics = (job.result or {}).get("metrics") or {}
        scores = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, int | float))
        target = job.request.get("adapter_id") or job.request.get("base_model") or ""
        out.append([job.id, job.status, target, job.request.get("dataset_id"), scores or job.error or ""])
    return out


def submit_eval(
    services: Services, adapter: int | None, base_model: str | None, dataset: int | None, options: dict[str, Any]
) -> str:
    """Validate and queue an eval job; returns a confirmation line."""
    if not dataset:
        raise gr.Error("Choose a dataset to evaluate on.")
    request = {"kind": "eval", "dataset_id": int(dataset), **options}
    if adapter:
        request["adapter_id"] = int(adapter)
    else:
        request["base_model"] = base_model or services.settings.default_base_model
    target = f"adapter #{adapter}" if adapter else request["base_model"]
    job = services.jobs.submit(request, name=f"eval {target} on dataset #{dataset}")
    return f"Queued evaluation job #{job.id}; results appear below when it finishes.{queue_wait_sentence(job)}"


def build(services: Services, tab: gr.Tab, demo: gr.Blocks) -> None:
    """Lay out the tab and wire its events."""
    c: dict[str, Any] = {}
    with gr.Row():
        c["adapter"] = gr.Dropdown(
            label="Adapter",
            choices=[("No adapter (base model)", BASE_ONLY)],
            value=BASE_ONLY,
            filterable=True,
            elem_id="eval-adapter",
        )
        c["base_model"] = gr.Textbox(
            label="Base model (when no adapter)", value=services.settings.default_base_model, elem_id="eval-base"
        )
        c["dataset"] = gr.Dropdown(label="Dataset", choices=[], elem_id="eval-dataset")
    with gr.Row(elem_classes=["form-grid"]):
        # default_factory values are not in the JSON schema: give the metrics default explicitly.
        metrics_default = EvalRequest.model_fields["metrics"].get_default(call_default_factory=True)
        form = SchemaForm(
            EvalRequest.model_json_schema(), "eval", only=FORM_FIELDS, initial={"metrics": metrics_default}
        )
    c["submit"] = gr.Button("Evaluate", variant="primary", elem_id="eval-submit")
    c["status"] = gr.Markdown(elem_id="eval-status")
    c["results"] = gr.Dataframe(
        headers=["job", "status", "adapter/base", "dataset", "scores"],
        value=lambda: results_rows(services),
        interactive=False,
        elem_id="eval-results",
    )

    def on_submit(adapter, base_model, dataset, **raw: Any) -> dict[str, Any]:
        options = form.values([raw[f"opt.{n}"] for n in form.names])
        return {
            "status": submit_eval(services, adapter, base_model, dataset, options),
            "results": results_rows(services),
        }

    def on_tab() -> dict[str, Any]:
        return {
            "adapter": gr.update(choices=adapter_choices(services)),
            "dataset": gr.update(choices=dataset_choices(services)),
            "results": results_rows(services),
        }

    inputs = {k: c[k] for k in ("adapter", "base_model", "dataset")} | {f"opt.{n}": w for n, w in form.widgets.items()}
    bind(c["submit"].click, on_submit, inputs, {k: c[k] for k in ("status", "results")})
    bind(tab.select, on_tab, {}, {k: c[k] for k in ("adapter", "dataset", "results")})

    def refresh_results() -> dict[str, Any]:
        return {"results": results_rows(services)}

    bind(gr.Timer(5.0).tick, refresh_results, {}, {"results": c["results"]}, show_progress="hidden")
