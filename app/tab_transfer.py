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


RESULT_HEADERS = [
    "job",
    "status",
    "source",
    "target base",
    "written",
    "kept",
    "trained",
    "new adapter",
    "why it failed",
]
NO_JOBS_YET = (
    "No transfer jobs yet. Choose an adapter that says 'has kit' and a target base above, then press **Transfer**."
)
# The offline refusal of studio.models.base_models._hub_snapshot; the model id is written with !r.
OFFLINE_MISSING = re.compile(r"model (['\"])(?P<model>.+?)\1 is not in the local Hugging Face cache")


def failure_reason(error: str | None) -> str:
    """Why a transfer failed, in words a person who does not write code can act on.

    The offline refusal tells an administrator to set STUDIO_OFFLINE=0; the person at the form
    needs to know which model is missing and what they can do. Other reasons are already
    sentences and are kept as they are; the job's log keeps the technical detail either way.
    """
    text = (error or "").strip()
    found = OFFLINE_MISSING.search(text)
    if found:
        return (
            f"The base model {found['model']} is not on this machine, and this studio is set not to download "
            "models. Pick a base model that is already here (from the Target base list, or a local model "
            "directory), or ask your administrator to allow model downloads."
        )
    return text


def results_rows(services: Services) -> list[list[Any]]:
    """Recent transfer jobs: source, target, live counts, the adapter made and, for a failure, why."""
    out = []
    for job in services.jobs.list(kind="transfer", limit=50):
        result = job.result or {}
        made = f"#{result['adapter_id']}" if result.get("adapter_id") else ""
        why = failure_reason(job.error) if job.status == "failed" else ""
        written, kept, trained = job_counts(job)
        source = f"#{job.request.get('adapter_id')}"
        target = job.request.get("target_base", "")
        out.append([job.id, job.status, source, target, written, kept, trained, made, why])
    return out


def results_note(services: Services) -> str:
    """The line under the results table: 'no jobs yet', or the newest failure spelt out in full.

    The table's cells are narrow; a failure's reason is what the person must read to fix it,
    so the newest one is repeated here, with where to find the technical detail.
    """
    jobs = services.jobs.list(kind="transfer", limit=50)
    if not jobs:
        return NO_JOBS_YET
    failed = next((job for job in jobs if job.status == "failed"), None)
    if failed is None:
        return ""
    return (
        f"✗ **Transfer job #{failed.id} failed:** {failure_reason(failed.error) or 'no reason was recorded.'}\n\n"
        f"The technical detail is in the log of job #{failed.id} (Jobs tab)."
    )


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
        headers=RESULT_HEADERS,
        value=lambda: results_rows(services),
        interactive=False,
        wrap=True,  # a failure's reason is a sentence: wrapped, not cut off at the cell's edge
        elem_id="transfer-results",
    )
    c["note"] = gr.Markdown(lambda: results_note(services), elem_id="transfer-results-note")

    def refresh_results() -> dict[str, Any]:
        return {"results": results_rows(services), "note": results_note(services)}

    def on_submit(adapter, target, name, submission_token=None, **raw: Any) -> dict[str, Any]:
        options = form.values([raw[f"opt.{n}"] for n in form.names])
        line = submit_transfer(services, adapter, target, name, options, submission_token)
        return {"status": f"✓ {line}", **refresh_results()}

    def on_tab() -> dict[str, Any]:
        return {"adapter": gr.update(choices=source_choices(services)), **refresh_results()}

    inputs = {"adapter": c["adapter"], "target": c["target"], "name": c["name"]}
    inputs |= {f"opt.{n}": w for n, w in form.widgets.items()}
    bind_submit(
        c["submit"], on_submit, inputs, {k: c[k] for k in ("status", "results", "note")}, "status", c["submission_token"]
    )
    bind(tab.select, on_tab, {}, {k: c[k] for k in ("adapter", "results", "note")})
    listing = {k: c[k] for k in ("results", "note")}
    bind(gr.Timer(3.0).tick, refresh_results, {}, listing, show_progress="hidden")
