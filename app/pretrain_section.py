"""Train tab, "Pre-train an encoder" section: a ``pretrain`` job (LoRA-BERT's first half) from the UI.

A dataset of DNA, RNA or protein sequences → a small BERT-style encoder pre-trained from scratch,
registered as a base model that the Train tab's base-model list then offers. The form comes from
:class:`~studio.schema.PretrainRequest` (dataset pickers by hand, the rest generated from the schema);
each problem is shown under its field, as in the Compose tab, and the time estimate (one real step
timed on this machine, as ``studio pretrain`` prints it) is shown before submitting. A preset fills the
form with a named recipe (studio/sequences/recipes.py) or puts the schema's defaults back.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from pydantic import ValidationError

from app.compose_errors import FormErrors, field_errors, form_error_updates, widget_error
from app.forms import SchemaForm
from app.ui import bind, bind_submit, new_submission_token, queue_wait_sentence
from studio.errors import StudioError
from studio.schema import PretrainRequest
from studio.sequences.recipes import SEQUENCE_RECIPES
from studio.services.container import Services

FORM_FIELDS = (
    "architecture",
    "tokenizer",
    "k",
    "size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "max_length",
    "window_overlap",
    "classifier_pooling",
    "epochs",
    "max_steps",
    "batch_size",
    "learning_rate",
    "warmup_ratio",
    "mask_prob",
    "validation_fraction",
    "name",
    "seed",
)
TOP_INFO = {
    "dataset_id": "A dataset with a column of DNA, RNA or protein sequences (its training rows are read).",
    "extra_dataset_id": "Optional: more unlabelled sequences to pre-train on (never a test set).",
}
NEEDS_FIXING = "⚠ Some settings need fixing: see the highlighted fields."
DEFAULTS = "Defaults"
DEFAULTS_INFO = "The studio's defaults: the tokenizer the dataset import proposed, an encoder sized from your data."
ESTIMATE_HINT = "Choose a dataset of sequences to see the encoder's size and how long pre-training might take."


def sequence_dataset_choices(services: Services) -> list[tuple[str, int]]:
    """``(label, id)`` of the datasets whose import found a sequence column, with its kind and proposed tokenizer."""
    out = []
    for row in services.datasets.list():
        found = (row.report or {}).get("sequence") or {}
        if not found.get("column"):
            continue
        kind = found.get("kind", "sequences")
        tokens = f"{found['k']}-mers" if found.get("tokenizer") == "kmer" else "one token per letter"
        out.append((f"#{row.id} {row.name} ({kind} in '{found['column']}', {tokens}, {row.rows} rows)", row.id))
    return out


def preset_choices() -> list[str]:
    """The pre-training presets: the schema's defaults, then each named sequence recipe."""
    return [DEFAULTS, *SEQUENCE_RECIPES]


def preset_values(preset: str) -> dict[str, Any]:
    """The form values preset ``preset`` sets: every field some recipe sets, at the recipe's value or the default.

    Defaults puts all those fields back to the schema's defaults, so switching presets leaves nothing of the
    previous one behind; fields no recipe touches (name, seed) keep what was typed.
    """
    fields = PretrainRequest.model_fields
    touched = dict.fromkeys(name for recipe in SEQUENCE_RECIPES.values() for name in recipe.pretrain)
    chosen = SEQUENCE_RECIPES[preset].pretrain if preset in SEQUENCE_RECIPES else {}
    return {name: chosen.get(name, fields[name].default) for name in touched}


def preset_info(preset: str) -> str:
    """What the preset is for and where its evidence is (one line under the choice)."""
    recipe = SEQUENCE_RECIPES.get(preset)
    return recipe.purpose if recipe else DEFAULTS_INFO


def build_pretrain_request(
    services: Services, dataset_id: Any, extra_dataset_id: Any, options: dict[str, Any]
) -> PretrainRequest:
    """Validate the form as the worker will (schema, then the dataset's sequences and tokenizer); FormErrors."""
    from studio.sequences.pretrain import sequence_source, tokenizer_choice

    errors: dict[str, str] = {}
    if not dataset_id:
        errors["dataset_id"] = "Choose a dataset of sequences (add one in the Datasets tab)."
    data = {
        "dataset_id": int(dataset_id or 1),  # let the rest be checked too
        "extra_dataset_id": int(extra_dataset_id) if extra_dataset_id else None,
        **options,
    }
    data["name"] = (data.get("name") or "").strip() or None
    request = None
    try:
        request = PretrainRequest.model_validate(data)
    except ValidationError as exc:
        for key, message in field_errors(exc).items():
            errors.setdefault(key, message)
    if request is not None and dataset_id:
        # What the job refuses at its start (no sequence column, a protein tokenizer for DNA), said now.
        try:
            source = sequence_source(services.datasets.get(int(dataset_id)), request.sequence_column)
        except StudioError as exc:
            errors["dataset_id"] = str(exc)
        else:
            try:
                tokenizer_choice(request, source)
            except StudioError as exc:
                errors["tokenizer"] = str(exc)
    if errors or request is None:
        raise FormErrors(errors or {"request": "invalid"})
    return request


def estimate_markdown(services: Services, request: PretrainRequest) -> str:
    """The encoder the job would build and its duration, from one real step timed on this machine."""
    import torch

    from studio.device import detect_device
    from studio.sequences.pretrain import describe_plan, estimate_time, plan_pretraining

    device = detect_device(services.settings.device)
    plan = plan_pretraining(request, services.registry, device.type, lambda _line: None)
    text = describe_plan(plan)
    try:
        estimate = estimate_time(
            request, plan.data, plan.model, plan.tokenizer, plan.k, torch.device(device.torch_device)
        )
    except (RuntimeError, ValueError) as exc:
        return f"{text}.  \n*Time estimate unavailable: {str(exc)[:160]}*"
    return f"**{estimate.steps} steps** · **{estimate.describe()}** on {device.label}.  \n{text}."


def submit_pretrain(services: Services, request: PretrainRequest, submission_token: str | None = None) -> str:
    """Queue the job; a confirmation line saying where the encoder will appear."""
    job = services.jobs.submit(request, submission_token=submission_token)
    name = request.name or f"seq-encoder-…-{job.id}"
    return (
        f"Queued pre-train job #{job.id}; follow it in the Jobs tab. When it finishes, the encoder **{name}** is a "
        f"choice of *Base model* above: train a LoRA classifier on it.{queue_wait_sentence(job)}"
    )


def build_pretrain_section(services: Services, tab: gr.Tab) -> dict[str, Any]:
    """Lay out the section (inside the caller's accordion) and wire its events; returns the components by name."""
    from app.tab_datasets import dataset_choices

    c: dict[str, Any] = {}
    gr.Markdown(
        "Sequences (DNA, RNA, proteins) are not text a chat model can read. **Pre-train a small encoder** on your "
        "own sequences first (masked-language modelling, as LoRA-BERT does), then pick it as the base model above "
        "and train a LoRA classifier on it. Long sequences are read whole, as overlapping windows.",
        elem_id="pretrain-intro",
    )
    with gr.Row():
        c["dataset_id"] = gr.Dropdown(
            label="Sequences", choices=[], info=TOP_INFO["dataset_id"], elem_id="pretrain-dataset"
        )
        c["extra_dataset_id"] = gr.Dropdown(
            label="Extra unlabelled sequences",
            choices=[],
            info=TOP_INFO["extra_dataset_id"],
            elem_id="pretrain-extra-dataset",
        )
    c["preset"] = gr.Dropdown(
        label="Preset",
        choices=preset_choices(),
        value=DEFAULTS,
        info="Fills in the settings below with a recipe that worked on real data; you can still change each one.",
        elem_id="pretrain-preset",
    )
    c["preset_info"] = gr.Markdown(preset_info(DEFAULTS), elem_id="pretrain-preset-info")
    with gr.Row(elem_classes=["form-grid"]):
        form = SchemaForm(PretrainRequest.model_json_schema(), "pretrain", only=FORM_FIELDS)
    c["estimate"] = gr.Markdown(ESTIMATE_HINT, elem_id="pretrain-estimate")
    with gr.Row():
        c["estimate_button"] = gr.Button("Estimate size and time", elem_id="pretrain-estimate-button")
        c["submit"] = gr.Button("Pre-train encoder", variant="primary", elem_id="pretrain-submit")
    c["status"] = gr.Markdown(elem_id="pretrain-status")
    c["submission_token"] = gr.State(new_submission_token)  # a double click queues one job

    form_in = {f"opt.{n}": w for n, w in form.widgets.items()}
    top_in = {k: c[k] for k in TOP_INFO}

    def feedback(errors: dict[str, str]) -> dict[str, Any]:
        out = form_error_updates(form, "opt", errors)
        return out | {k: widget_error(errors.get(k), TOP_INFO[k]) for k in TOP_INFO}

    def read(dataset_id, extra_dataset_id, raw: dict[str, Any]) -> PretrainRequest:
        options = form.values([raw[f"opt.{n}"] for n in form.names])
        return build_pretrain_request(services, dataset_id, extra_dataset_id, options)

    def on_submit(dataset_id, extra_dataset_id, submission_token=None, **raw: Any) -> dict[str, Any]:
        try:
            request = read(dataset_id, extra_dataset_id, raw)
        except FormErrors as exc:
            # A pop-up as well, as the Train tab's submit gives: the section is long, the fields may be off screen.
            gr.Warning(
                f"Please fix {len(exc.errors)} setting(s) — " + "; ".join(f"{k}: {v}" for k, v in exc.errors.items())
            )
            return {"status": NEEDS_FIXING, **feedback(exc.errors)}
        line = submit_pretrain(services, request, submission_token)
        return {"status": f"✓ {line}", **feedback({})}

    def on_estimate(dataset_id, extra_dataset_id, **raw: Any) -> dict[str, Any]:
        if not dataset_id:
            return {"estimate": ESTIMATE_HINT, **feedback({})}
        try:
            request = read(dataset_id, extra_dataset_id, raw)
        except FormErrors as exc:
            return {"estimate": "⚠ To see an estimate, fix the highlighted fields.", **feedback(exc.errors)}
        return {"estimate": estimate_markdown(services, request), **feedback({})}

    def on_tab() -> dict[str, Any]:
        return {
            "dataset_id": gr.update(choices=sequence_dataset_choices(services)),
            "extra_dataset_id": gr.update(choices=dataset_choices(services)),
        }

    def on_preset(preset: str) -> dict[str, Any]:
        values = preset_values(preset)
        return {"preset_info": preset_info(preset)} | {f"opt.{n}": gr.update(value=v) for n, v in values.items()}

    feedback_out = form_in | top_in
    bind(c["preset"].change, on_preset, {"preset": c["preset"]}, {"preset_info": c["preset_info"]} | form_in)
    bind_submit(
        c["submit"],
        on_submit,
        top_in | form_in,
        {"status": c["status"]} | feedback_out,
        "status",
        c["submission_token"],
    )
    # Timing a step takes seconds on a CPU: one at a time, and only for the latest values.
    latest_only = {"trigger_mode": "always_last", "concurrency_limit": 1, "concurrency_id": "pretrain-estimate"}
    estimate_out = {"estimate": c["estimate"]} | feedback_out
    bind(c["estimate_button"].click, on_estimate, top_in | form_in, estimate_out, "estimate", **latest_only)
    bind(c["dataset_id"].change, on_estimate, top_in | form_in, estimate_out, "estimate", **latest_only)
    bind(tab.select, on_tab, {}, top_in)
    c["form"] = form
    return c
