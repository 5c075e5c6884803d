"""Transfer & Generate tab: carry an adapter to another base model (a transfer job), and, below, generate one.

The Transfer section queues ``transfer`` jobs (Trans-LoRA, :mod:`studio.transfer.job`) from the
TransferOptions schema and lists them with their live counts (inputs written, kept, trained on).
The Generate section (ICM-LoRA) is another module, added when it is installed.
"""

from __future__ import annotations

import re
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
from studio.schema import TransferOptions, TransferRequest, parse_request
from studio.services.container import Services

TITLE = "Transfer & Generate"
ELEM_ID = "tab-transfer"
FORM_FIELDS = ("samples", "threshold", "max_attempts", "use_filter", "max_answer_tokens", "r", "seed")
COUNTS = re.compile(r"(\d+) written, (\d+) of \d+ kept, (\d+) trained")


def transfer_available() -> bool:
    """True when this installation has the transfer job kind (no dead buttons otherwise)."""
    return module_installed("studio.transfer.job")


def available() -> bool:
    """True when either section of the tab has something to show."""
    return transfer_available() or module_installed("app.generate_section")


def source_choices(services: Services) -> list[tuple[str, int]]:
    """The newest adapters, each saying whether it has a transfer kit (only those can be transferred)."""
    from studio.transfer.job import has_kit

    out = []
    for row in latest_adapters(services):
        kit = "has kit ✓" if has_kit(row.path) else "no kit"
        out.append((f"#{row.id} {row.name} ({row.variant}, {row.base_model}) — {kit}", row.id))
    return out


def target_choices(services: Services) -> list[str]:
    """Base models to transfer to: the studio's causal-LM bases (any local directory or hub id may be typed)."""
    from app.tab_train import base_model_choices

    return base_model_choices(services)


def submit_transfer(
    services: Services,
    adapter_id: int | None,
    target_base: str | None,
    name: str | None,
    options: dict[str, Any],
    submission_token: str | None = None,
) -> str:
    """Validate and queue a transfer job; returns a confirmation line. Refusals are ValidationFailed in plain words."""
    if not adapter_id:
        raise ValidationFailed("Adapter: choose the adapter to transfer (one that says 'has kit').")
    if not (target_base or "").strip():
        raise ValidationFailed("Target base: choose a base model or type a local model directory.")
    request: TransferRequest = parse_request(
        {
            "kind": "transfer",
            "adapter_id": int(adapter_id),
            "target_base": target_base.strip(),
            "name": (name or "").strip() or None,
            "options": {k: v for k, v in options.items() if v is not None},
        }
    )
    job = services.jobs.submit(request, submission_token=submission_token)
    return (
        f"Queued transfer job #{job.id} (adapter #{request.adapter_id} to {request.target_base}); "
        f"the counts update below and the new adapter appears in Adapters.{queue_wait_sentence(job)}"
    )


def job_counts(job: Any) -> tuple[Any, Any, Any]:
    """(written, kept, trained): from the result when done, else from the live progress text."""
    result = job.result or {}
    if "generated" in result:
        return result["generated"], result["kept"], result["trained"]
    found = COUNTS.search(job.message or "")
    return tuple(int(x) for x in found.groups()) if found else ("", "", "")


def results_rows(services: Services) -> list[list[Any]]:
    """Recent transfer jobs: source, target, live counts and the adapter made (or why it failed)."""
    out = []
    for job in services.jobs.list(kind="transfer", limit=50):
        result = job.result or {}
        made = f"#{result['adapter_id']}" if result.get("adapter_id") else (job.error or "")
        written, kept, trained = job_counts(job)
        source = f"#{job.request.get('adapter_id')}"
        out.append([job.id, job.status, source, job.request.get("target_base", ""), written, kept, trained, made])
    return out


def build(services: Services, tab: gr.Tab, demo: gr.Blocks) -> None:
    """Lay out the tab (Transfer, then Generate when installed) and wire its events."""
    if transfer_available():
        build_transfer_section(services, tab)
    try:
        from app.generate_section import build_generate_section

        build_generate_section(services, tab, demo)
    except ImportError:
        pass


def build_transfer_section(services: Services, tab: gr.Tab) -> None:
    """The Transfer form, its submit button and the list of transfer jobs with live counts."""
    c: dict[str, Any] = {}
    gr.Markdown(
        "### Transfer an adapter to another base model\n"
        "When a base model is replaced, **Trans-LoRA** carries an adapter over without its training data: the new "
        "base writes task inputs from the 5 seed examples kept with the adapter, a small discriminator keeps those "
        "that look real, the old adapter answers them, and a new LoRA is trained on the new base with those "
        "answers. Only adapters trained with **Keep a transfer kit** on (text generation on chat data) can be "
        "transferred.",
        elem_id="transfer-intro",
    )
    with gr.Row():
        c["adapter"] = gr.Dropdown(
            label="Adapter",
            choices=[],
            filterable=True,
            elem_id="transfer-adapter",
            info=f"The newest {PICKER_LIMIT} adapters; 'has kit' ones can be transferred.",
        )
        c["target"] = gr.Dropdown(
            label="Target base",
            choices=target_choices(services),
            allow_custom_value=True,
            elem_id="transfer-target",
            info="The new base model: pick one or type a local model directory (or a Hugging Face id).",
        )
        c["name"] = gr.Textbox(
            label="Name", info="Name of the transferred adapter (optional).", elem_id="transfer-name"
        )
    with gr.Row(elem_classes=["form-grid"]):
        form = SchemaForm(TransferOptions.model_json_schema(), "transfer", only=FORM_FIELDS)
    c["submit"] = gr.Button("Transfer", variant="primary", elem_id="transfer-submit")
    c["status"] = gr.Markdown(elem_id="transfer-status")
    c["submission_token"] = gr.State(new_submission_token)  # a double click queues one transfer
    c["results"] = gr.Dataframe(
        headers=["job", "status", "source", "target base", "written", "kept", "trained", "new adapter"],
        value=lambda: results_rows(services),
        interactive=False,
        elem_id="transfer-results",
    )

    def on_submit(adapter, target, name, submission_token=None, **raw: Any) -> dict[str, Any]:
        options = form.values([raw[f"opt.{n}"] for n in form.names])
        line = submit_transfer(services, adapter, target, name, options, submission_token)
        return {"status": f"✓ {line}", "results": results_rows(services)}

    def on_tab() -> dict[str, Any]:
        return {"adapter": gr.update(choices=source_choices(services)), "results": results_rows(services)}

    inputs = {"adapter": c["adapter"], "target": c["target"], "name": c["name"]}
    inputs |= {f"opt.{n}": w for n, w in form.widgets.items()}
    bind_submit(
        c["submit"], on_submit, inputs, {k: c[k] for k in ("status", "results")}, "status", c["submission_token"]
    )
    bind(tab.select, on_tab, {}, {k: c[k] for k in ("adapter", "results")})

    def refresh_results() -> dict[str, Any]:
        return {"results": results_rows(services)}

    bind(gr.Timer(3.0).tick, refresh_results, {}, {"results": c["results"]}, show_progress="hidden")
