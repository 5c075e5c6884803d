"""Merge tab: combine adapters of one base model into a new adapter (a merge job), and list the merges.

Only shown when this installation has the merge job kind (``studio.merging.job``).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.forms import SchemaForm
from app.ui import (
    PICKER_LIMIT,
    bind,
    bind_submit,
    latest_adapters,
    module_installed,
    new_submission_token,
    queue_wait_sentence,
)
from studio.errors import ValidationFailed
from studio.schema import MergeRequest, parse_request
from studio.services.container import Services

TITLE = "Merge"
ELEM_ID = "tab-merge"
FORM_FIELDS = ("method", "density", "rank", "name", "seed", "param_reweight", "output_reweight")
WEIGHTS_HELP = (
    "One number per adapter, in the order chosen, e.g. 0.7, 0.3 (a negative weight subtracts an adapter). "
    "Empty: linear and dare_linear average them, ties, dare_ties and lego give each 1."
)


def available() -> bool:
    """True when the merge job kind exists in this installation (no dead buttons otherwise)."""
    return module_installed("studio.merging.job")


def adapter_choices(services: Services) -> list[tuple[str, int]]:
    """The newest adapters, labelled with their base model (only adapters of one base model can be merged)."""
    return [(f"#{r.id} {r.name} ({r.variant}, {r.base_model})", r.id) for r in latest_adapters(services)]


def parse_weights(text: str | None) -> list[float] | None:
    """'0.7, 0.3' -> [0.7, 0.3]; empty -> None; anything else is a ValidationFailed naming the bad entry."""
    parts = [p.strip() for p in (text or "").replace(";", ",").split(",") if p.strip()]
    weights = []
    for part in parts:
        try:
            weights.append(float(part))
        except ValueError:
            raise ValidationFailed(
                f"Weights: {part!r} is not a number; write one number per adapter, e.g. 0.7, 0.3"
            ) from None
    return weights or None


def submit_merge(
    services: Services,
    adapters: list[int] | None,
    weights: str | None,
    options: dict[str, Any],
    submission_token: str | None = None,
) -> str:
    """Validate and queue a merge job; returns a confirmation line. Refusals are ValidationFailed in plain words.

    A repeated submit with the same ``submission_token`` (a double click) finds the job the first one queued.
    """
    chosen = [int(a) for a in adapters or []]
    if not chosen:
        raise ValidationFailed("Adapters: choose the adapters to merge (one adapter with a smaller rank resizes it).")
    request: MergeRequest = parse_request(
        {"kind": "merge", "adapter_ids": chosen, "weights": parse_weights(weights), **options}
    )
    listed = ", ".join(f"#{i} × {w:g}" for i, w in zip(chosen, request.resolved_weights(), strict=True))
    # named after the method and parents by the job service
    job = services.jobs.submit(request, submission_token=submission_token)
    done = "the new adapter appears below and in Adapters."
    return f"Queued merge job #{job.id} ({request.method}: {listed}); {done}{queue_wait_sentence(job)}"


def results_rows(services: Services) -> list[list[Any]]:
    """Recent merge jobs: parents, method, the adapter made and how close its LoRA is to the merge."""
    from studio.merging.error_meaning import merge_error_verdict

    out = []
    for job in services.jobs.list(kind="merge", limit=50):
        result = job.result or {}
        parents = ", ".join(f"#{i}" for i in job.request.get("adapter_ids", []))
        error = result.get("merge_max_error")
        made = f"#{result['adapter_id']}" if result.get("adapter_id") else ""
        closeness = f"{error:.1e}" if isinstance(error, int | float) else (job.error or "")
        meaning = merge_error_verdict(error) if isinstance(error, int | float) else ""
        out.append([job.id, job.status, parents, job.request.get("method", ""), made, closeness, meaning])
    return out


def build(services: Services, tab: gr.Tab, demo: gr.Blocks) -> None:
    """Lay out the tab and wire its events."""
    c: dict[str, Any] = {}
    gr.Markdown(
        "Combine adapters of **one base model** into a new plain LoRA adapter. *linear* adds their weight "
        "changes with your weights; *ties* keeps each adapter's largest changes and resolves sign conflicts, "
        "which suits adapters trained for different tasks; the *dare* methods first drop a random share of "
        "each adapter's changes; *lego* (LoRA-LEGO) clusters the rank units of all the LoRAs into the k units of "
        "one LoRA (Rank = k, by default the mean rank). Evaluate the result in the Evaluate tab or try it in "
        "the Playground.",
        elem_id="merge-intro",
    )
    with gr.Row():
        c["adapters"] = gr.Dropdown(
            label="Adapters",
            choices=[],
            multiselect=True,
            filterable=True,
            elem_id="merge-adapters",
            info=f"The newest {PICKER_LIMIT} adapters.",
        )
        c["weights"] = gr.Textbox(label="Weights", info=WEIGHTS_HELP, elem_id="merge-weights")
    with gr.Row(elem_classes=["form-grid"]):
        form = SchemaForm(MergeRequest.model_json_schema(), "merge", only=FORM_FIELDS)
    c["submit"] = gr.Button("Merge", variant="primary", elem_id="merge-submit")
    c["status"] = gr.Markdown(elem_id="merge-status")
    c["submission_token"] = gr.State(new_submission_token)  # a double click queues one merge
    c["results"] = gr.Dataframe(
        headers=["job", "status", "adapters", "method", "new adapter", "largest error", "the saved LoRA is"],
        value=lambda: results_rows(services),
        interactive=False,
        elem_id="merge-results",
    )

    def on_submit(adapters, weights, submission_token=None, **raw: Any) -> dict[str, Any]:
        options = form.values([raw[f"opt.{n}"] for n in form.names])
        line = submit_merge(services, adapters, weights, options, submission_token)
        return {"status": f"✓ {line}", "results": results_rows(services)}

    def on_tab() -> dict[str, Any]:
        return {"adapters": gr.update(choices=adapter_choices(services)), "results": results_rows(services)}

    inputs = {"adapters": c["adapters"], "weights": c["weights"]} | {f"opt.{n}": w for n, w in form.widgets.items()}
    outputs = {k: c[k] for k in ("status", "results")}
    bind_submit(c["submit"], on_submit, inputs, outputs, "status", c["submission_token"])
    bind(tab.select, on_tab, {}, {k: c[k] for k in ("adapters", "results")})

    def refresh_results() -> dict[str, Any]:
        return {"results": results_rows(services)}

    bind(gr.Timer(5.0).tick, refresh_results, {}, {"results": c["results"]}, show_progress="hidden")
