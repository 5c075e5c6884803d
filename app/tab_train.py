"""Train tab: dataset, base model, variant (with a learn-more panel), presets, advanced settings, submit.

The advanced settings are generated from ``TrainingHyperParams`` and each variant's
params schema; submitting validates the same pydantic models the worker will, and
puts each problem under the field it is about.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr
from pydantic import ValidationError

from app.forms import SchemaForm, errors_by_field
from app.pretrain_section import build_pretrain_section
from app.tab_datasets import dataset_choices
from app.train_presets import PRESET_HELP, PRESETS, estimate_seconds, preset_hyper, total_steps
from app.ui import bind, bind_submit, human_seconds, new_submission_token, queue_wait_sentence
from app.variant_form import VariantForms
from studio.device import detect_device
from studio.errors import StudioError, ValidationFailed
from studio.schema import TrainingHyperParams, TrainRequest
from studio.services.container import Services
from studio.services.system import online_workers
from studio.training.duration import (
    estimate_for_request,
    micro_batch_tokens,
    planned_steps,
    windowed_request_data,
)
from studio.variants.registry import get_variant, variant_catalog

TITLE = "Train"
ELEM_ID = "tab-train"
AUTO_TASK = "auto (from the dataset)"
TOP_FIELDS = ("dataset_id", "base_model", "name", "seed", "task")
TOP_INFO = {
    "dataset_id": "Rows to learn from. Add datasets in the Datasets tab.",
    "base_model": "The model the adapter is trained for (bundled models work offline).",
}
QUICK = "Quick"
KIT_LABEL = "Keep a transfer kit"  # the name the Transfer tab and its refusals use
KIT_COST = (
    " It is made after training, a few minutes on a CPU (the time estimate says it apart: "
    "'+ ~N s for the transfer kit'); untick it for a quick run."
)
NEEDS_FIXING = "⚠ Some settings need fixing: see the highlighted fields."
ESTIMATING = "⏳ Estimating how long training takes (timing a step on this machine)…"


class FormErrors(ValidationFailed):
    """Validation problems keyed by field (``hyper.<f>``, ``variant.<f>`` or a top-level field)."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


def _field_title(key: str) -> str:
    """'hyper.learning_rate' -> 'learning rate'; 'dataset_id' -> 'dataset'."""
    return key.rsplit(".", 1)[-1].removesuffix("_id").replace("_", " ")


def base_model_choices(services: Services) -> list[str]:
    """Causal-LM base models the studio knows: the default first."""
    names = [services.settings.default_base_model]
    names += [m.name for m in services.base_models("causal-lm")]
    return list(dict.fromkeys(names))


def train_base_choices(services: Services) -> list[tuple[str, str]]:
    """``(label, name)`` of every base the Train tab offers: the causal LMs, then the encoders (classifiers only).

    Encoders include those a pre-train job registered, so a freshly pre-trained sequence encoder is
    one click away after its job.
    """
    labels = {name: name for name in base_model_choices(services)}
    for model in services.base_models("encoder"):
        labels.setdefault(model.name, f"{model.name} (encoder: classification only)")
    return [(label, name) for name, label in labels.items()]


def variant_markdown(variant: str) -> str:
    """The learn-more text of a variant: what it is, when to pick it, its paper."""
    info = get_variant(variant).info()
    text = f"### {info['title']}\n{info['description']}\n\n**When to pick it:** {info['when_to_use']}"
    paper = info.get("paper")
    if paper:
        text += f"\n\n**Paper:** [{paper['title']} ({paper['year']})]({paper['url']})"
    if info.get("changes_rank"):
        text += "\n\n*Its ranks change during training: the Adapters tab shows where they went.*"
    return text


def build_request(
    *,
    dataset_id: Any,
    base_model: str | None,
    base_custom: str | None,
    variant: str,
    variant_params: dict[str, Any],
    hyper: dict[str, Any],
    name: str | None,
    seed: Any,
    task: str | None,
    transfer_kit: bool = True,
) -> TrainRequest:
    """Validate the form as the worker will; FormErrors maps every problem to its field.

    ``transfer_kit`` is the Advanced settings' checkbox: on by default as in ``studio train``, and off
    for a quick run, whose kit (a discriminator trained after the adapter) takes minutes on a CPU.
    """
    errors: dict[str, str] = {}
    params: dict[str, Any] = {}
    try:
        params = get_variant(variant).parse_params(variant_params).model_dump(mode="json")
    except ValidationError as exc:
        errors.update({f"variant.{k}": v for k, v in errors_by_field(exc).items()})
    data: dict[str, Any] = {
        "dataset_id": dataset_id,
        "base_model": (base_custom or "").strip() or base_model,
        "variant": variant,
        "variant_params": params,
        "hyper": hyper,
        "seed": 42 if seed is None else int(seed),
        "name": (name or "").strip() or None,
        "transfer_kit": bool(transfer_kit),
    }
    if task and task != AUTO_TASK:
        data["task"] = task  # only when chosen: otherwise the dataset decides
    if not dataset_id:
        errors["dataset_id"] = "Choose a dataset (add one in the Datasets tab)."
        data["dataset_id"] = 1  # let the rest be checked too
    if not data["base_model"]:
        errors["base_model"] = "Choose a base model or type a Hugging Face id or local directory."
        data["base_model"] = "x"
    try:
        request = TrainRequest.model_validate(data)
    except ValidationError as exc:
        errors.update({f"hyper.{k}": v for k, v in errors_by_field(exc, ("hyper",)).items()})
        errors.update({k: v for k, v in errors_by_field(exc).items() if k in TOP_FIELDS and k not in errors})
        request = None
    if errors or request is None:
        raise FormErrors(errors or {"request": "invalid"})
    return request


def form_problems(**form: Any) -> dict[str, str]:
    """What :func:`build_request` would refuse, by field ({} when the form is fine); nothing is queued."""
    try:
        build_request(**form)
    except FormErrors as exc:
        return exc.errors
    return {}


def submit_training(services: Services, submission_token: str | None = None, **form: Any) -> dict[str, Any]:
    """Validate and queue a training job; returns ``{"job_id", "message"}``. Raises FormErrors.

    A repeated submit with the same ``submission_token`` (a double click) finds the job the first one queued.
    """
    request = build_request(**form)
    dataset = services.datasets.get(request.dataset_id)  # a clear NotFoundError before anything is queued
    if "task" not in request.model_fields_set:
        # "auto": the dataset's task, fixed now as `studio train` does. The stored request holds every field,
        # so left unset it would reach the worker as an explicit causal-lm (an encoder base then fails).
        request = request.model_copy(update={"task": (dataset.report or {}).get("task", "causal-lm")})
    # named "<variant> on '<dataset>' (#id)" by the job service
    job = services.jobs.submit(request, submission_token=submission_token)
    workers = online_workers(services.registry, services.settings)
    wait = "" if workers else " No worker is online yet: it starts when one does (`studio worker`)."
    message = f"Queued training job #{job.id}. Follow it in the Jobs tab.{queue_wait_sentence(job)}{wait}"
    return {"job_id": job.id, "message": message}


def estimate_markdown(
    services: Services, dataset_id: Any, base_model: str | None, hyper: dict[str, Any], transfer_kit: bool = True
) -> str:
    """Steps and the run's duration, measured on this machine (a rough guess only for a GPU seen from a CPU).

    An invalid setting gets what to fix instead: an estimate of −5 steps would be nonsense. With
    ``transfer_kit`` (the form's checkbox) the measured estimate adds the kit built after training.
    """
    if not dataset_id:
        return "Choose a dataset to see how long training might take."
    try:
        TrainingHyperParams.model_validate(hyper)
    except ValidationError as exc:
        fixes = "; ".join(f"{_field_title(k)}: {v}" for k, v in errors_by_field(exc).items())
        return f"⚠ To see an estimate, fix {fixes}."
    dataset = services.datasets.get(int(dataset_id))
    workers = online_workers(services.registry, services.settings)
    device = detect_device(services.settings.device)
    base_model = base_model or services.settings.default_base_model
    remote_gpu = any(w.device.startswith("cuda") for w in workers) and device.type != "cuda"
    if not remote_gpu:
        try:
            request = _estimate_request(dataset, base_model, hyper, transfer_kit)
            task = dataset.report.get("task", "causal-lm")
            estimate = estimate_for_request(request, services.settings, device, dataset.stored_path, task)
        except (StudioError, ValidationError, OSError, ValueError) as exc:
            note = f" (could not measure on this machine: {str(exc)[:160]})"
        else:
            return (
                f"**{estimate.steps} steps** · **{estimate.describe()}** on {device.label}.  \n{estimate.breakdown()}."
            )
    else:
        note = ""
    kind = "cuda" if remote_gpu else "cpu"
    rough = rough_estimate(services, dataset, base_model, hyper, kind)
    where = f"on {len(workers)} worker(s) online ({kind.upper()})" if workers else "(no worker online: CPU assumed)"
    detail = f": {rough.detail}" if rough.detail else ""
    kit = transfer_kit and dataset.report.get("task", "causal-lm") == "causal-lm"
    unpriced = " The transfer kit made after training is not counted in it." if kit else ""  # only measured
    return (
        f"**{rough.steps} steps** · estimated **~{human_seconds(rough.seconds)}** {where}{detail}. "
        f"*Rough estimate{note}.*{unpriced}"
    )


@dataclass(frozen=True)
class RoughEstimate:
    """The fallback guess: steps, seconds, and for a windowed sequence encoder what its steps count."""

    steps: int
    seconds: float
    tokens_per_example: float | None = None  # None: the typical row of a text dataset
    detail: str = ""  # the windows (a windowed sequence encoder), said in the estimate's line


def rough_estimate(
    services: Services, dataset: Any, base_model: str, hyper: dict[str, Any], kind: str
) -> RoughEstimate:
    """A guess from a typical throughput of ``kind`` (cpu / cuda), for when this machine cannot measure the run.

    A text dataset counts its rows. A classification dataset on a sequence encoder (pre-trained by the
    studio) is read as the run will read it, counted by the measured estimate's own helpers: an epoch's
    steps over the training windows (per_window) or sequences (a pooled window loss), and per example
    a window's tokens, or all of a sequence's windows when pooled.
    """
    windowed = None
    try:
        request = _estimate_request(dataset, base_model, hyper)
        task = dataset.report.get("task", "causal-lm")
        windowed = windowed_request_data(request, services.settings, dataset.stored_path, task)
    except (StudioError, ValidationError, OSError, ValueError):
        windowed = None  # the row count stands
    if windowed is None:
        return RoughEstimate(total_steps(dataset.rows, hyper), estimate_seconds(dataset.rows, hyper, kind))
    data, run = windowed.profile, request.hyper
    steps = planned_steps(request, data)
    per_example = micro_batch_tokens(request, data) / run.batch_size
    seconds = estimate_seconds(dataset.rows, run.model_dump(), kind, steps=steps, tokens_per_example=per_example)
    windows = data.examples_in(range(data.rows))
    detail = f"{dataset.rows} sequences read as ~{windows} windows of up to {windowed.max_length} tokens"
    if data.units is not None:
        detail += f", a step {run.batch_size} whole sequences with all their windows ({run.window_loss})"
    else:
        detail += f", a step {run.batch_size} windows"
    return RoughEstimate(steps, seconds, per_example, detail)


def _estimate_request(dataset: Any, base_model: str, hyper: dict[str, Any], transfer_kit: bool = True) -> TrainRequest:
    """The request the estimate measures: the form's settings on the chosen dataset and base."""
    settings = {k: v for k, v in hyper.items() if v is not None or k in ("max_steps", "max_eval_rows")}
    return TrainRequest(
        dataset_id=dataset.id,
        base_model=base_model,
        hyper=TrainingHyperParams(**settings),
        transfer_kit=bool(transfer_kit),
    )


def build(services: Services, tab: gr.Tab, demo: gr.Blocks) -> None:
    """Lay out the tab and wire its events."""
    catalog = variant_catalog()
    default_variant = catalog[0]["name"]
    c: dict[str, Any] = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            gr.Markdown("### 1 · Data and model")
            c["dataset_id"] = gr.Dropdown(
                label="Dataset",
                choices=[],
                value=None,
                elem_id="train-dataset",
                info=TOP_INFO["dataset_id"],
            )
            c["base_model"] = gr.Dropdown(
                label="Base model",
                choices=train_base_choices(services),
                value=services.settings.default_base_model,
                elem_id="train-base",
                info=TOP_INFO["base_model"],
            )
            c["base_custom"] = gr.Textbox(
                label="…or a Hugging Face id / local model directory",
                placeholder="e.g. /models/my-llama",
                elem_id="train-base-custom",
            )
            gr.Markdown("### 2 · How much training")
            c["preset"] = gr.Radio(
                choices=[(f"{k} — {v}", k) for k, v in PRESET_HELP.items()],
                value=QUICK,
                label="Preset",
                elem_id="train-preset",
            )
            c["estimate"] = gr.Markdown(
                "Choose a dataset to see how long training might take.", elem_id="train-estimate"
            )
            c["name"] = gr.Textbox(label="Adapter name", placeholder="optional", elem_id="train-name")
            c["submit"] = gr.Button("Start training", variant="primary", elem_id="train-submit")
            c["status"] = gr.Markdown(elem_id="train-status")
            c["submission_token"] = gr.State(new_submission_token)  # a double click queues one job
            # After a refused submit, every change re-checks the form, so its notices clear once fixed.
            c["show_problems"] = gr.State(False)
        with gr.Column(scale=6, min_width=320):
            gr.Markdown("### 3 · Method")
            c["variant"] = gr.Radio(
                choices=[(f"{v['title']} — {v['summary']}", v["name"]) for v in catalog],
                value=default_variant,
                label="LoRA variant",
                elem_id="train-variant",
                elem_classes=["variant-cards"],
            )
            with gr.Accordion("Learn more about this method", open=False, elem_id="train-learn-more"):
                c["variant_info"] = gr.Markdown(variant_markdown(default_variant), elem_id="train-variant-info")
    with gr.Accordion("Advanced settings", open=False, elem_id="train-advanced"):
        with gr.Row():
            c["task"] = gr.Dropdown(
                choices=[AUTO_TASK, "causal-lm", "classification"],
                value=AUTO_TASK,
                label="Task",
                elem_id="train-task",
                info=TrainRequest.model_fields["task"].description,
            )
            c["seed"] = gr.Number(
                value=42,
                precision=0,
                label="Seed",
                elem_id="train-seed",
                info=TrainRequest.model_fields["seed"].description,
            )
            # The Transfer tab and its refusals send users here to turn the kit on; it was not in the form.
            c["transfer_kit"] = gr.Checkbox(
                value=TrainRequest.model_fields["transfer_kit"].default,
                label=KIT_LABEL,
                elem_id="train-transfer-kit",
                info=TrainRequest.model_fields["transfer_kit"].description + KIT_COST,
            )
        gr.Markdown("**Optimisation**")
        with gr.Row(elem_classes=["form-grid"]):
            hyper = SchemaForm(TrainingHyperParams.model_json_schema(), "hp", initial=PRESETS[QUICK]["hyper"])
        gr.Markdown("**Method parameters**")
        with gr.Row(elem_classes=["form-grid"]):
            variants = VariantForms(catalog, default_variant, initial=PRESETS[QUICK]["variant"])
    with gr.Accordion("Pre-train an encoder on your sequences (DNA, RNA, proteins)", open=False, elem_id="pretrain"):
        build_pretrain_section(services, tab)

    hyper_in = {f"hyper.{n}": w for n, w in hyper.widgets.items()}
    variant_in = variants.inputs()
    top_in = {
        k: c[k] for k in ("dataset_id", "base_model", "base_custom", "variant", "name", "seed", "task", "transfer_kit")
    }

    def read_form(raw: dict[str, Any]) -> dict[str, Any]:
        """Widget values -> build_request keywords, by field name."""
        return {
            **{k: raw[k] for k in top_in},
            "hyper": hyper.values([raw[f"hyper.{n}"] for n in hyper.names]),
            "variant_params": variants.values(raw["variant"], raw),
        }

    def field_feedback(variant: str, errors: dict[str, str]) -> dict[str, Any]:
        hyper_errors = {k.removeprefix("hyper."): v for k, v in errors.items() if k.startswith("hyper.")}
        variant_errors = {k.removeprefix("variant."): v for k, v in errors.items() if k.startswith("variant.")}
        out = dict(zip(hyper_in, hyper.error_updates(hyper_errors), strict=True))
        out.update(variants.error_updates(variant, variant_errors))
        for key, info in TOP_INFO.items():
            message = errors.get(key)
            out[key] = gr.update(
                elem_classes=["field-error"] if message else [], info=f"⚠ {message}" if message else info
            )
        return out

    def on_submit(submission_token: str | None = None, **raw: Any) -> dict[str, Any]:
        form = read_form(raw)
        try:
            result = submit_training(services, submission_token, **form)
        except FormErrors as exc:
            listed = "; ".join(f"{_field_title(k)}: {v}" for k, v in exc.errors.items())
            gr.Warning(f"Please fix {len(exc.errors)} setting(s) — {listed}")
            return {
                "status": NEEDS_FIXING,
                "show_problems": True,
                **field_feedback(raw["variant"], exc.errors),
            }
        gr.Info(result["message"])
        return {"status": f"✓ {result['message']}", "show_problems": False, **field_feedback(raw["variant"], {})}

    def on_form_change(show_problems: bool, **raw: Any) -> dict[str, Any]:
        """Once a submit was refused, recompute its notices: each clears as soon as its cause is fixed."""
        if not show_problems:
            return {}
        errors = form_problems(**read_form(raw))
        return {"status": NEEDS_FIXING if errors else "", **field_feedback(raw["variant"], errors)}

    form_in = top_in | hyper_in | variant_in
    feedback_out = hyper_in | variant_in | {k: c[k] for k in ("dataset_id", "base_model")}
    status_out = {k: c[k] for k in ("status", "show_problems")}
    bind_submit(c["submit"], on_submit, form_in, status_out | feedback_out, "status", c["submission_token"])
    bind(
        partial(gr.on, [widget.change for widget in form_in.values()]),
        on_form_change,
        {"show_problems": c["show_problems"]} | form_in,
        {"status": c["status"]} | feedback_out,
        show_progress="hidden",
    )

    def on_variant(variant: str, preset: str | None) -> dict[str, Any]:
        values = PRESETS.get(preset or "", {}).get("variant", {})
        return {
            "variant_info": variant_markdown(variant),
            **variants.visibility(variant),
            **variants.set_values(variant, values),
        }

    bind(
        c["variant"].change,
        on_variant,
        {"variant": c["variant"], "preset": c["preset"]},
        {"variant_info": c["variant_info"]} | variants.group_outputs() | variant_in,
    )

    def variant_preset_handler(variant: str):
        def on_variant_preset(preset: str | None) -> dict[str, Any]:
            return variants.set_values(variant, variants.preset_values(variant, preset))

        on_variant_preset.__name__ = f"on_{variant}_preset"  # one API name per variant
        return on_variant_preset

    for variant_name, radio in variants.preset_radios.items():
        bind(radio.change, variant_preset_handler(variant_name), {"preset": radio}, variant_in)

    def on_preset(preset: str, variant: str) -> dict[str, Any]:
        # Every field a preset sets is a widget (tests/ui/test_sequence_presets.py), so none is lost on submit.
        out = {f"hyper.{n}": gr.update(value=v) for n, v in preset_hyper(preset).items()}
        return out | variants.set_values(variant, PRESETS[preset]["variant"])

    def on_estimate(**raw: Any) -> Iterator[dict[str, Any]]:
        if raw["dataset_id"]:
            # Timing a first step of a new shape takes seconds on a CPU: say so instead of the old line.
            yield {"estimate": ESTIMATING}
        hyper_values = hyper.values([raw[f"hyper.{n}"] for n in hyper.names])
        kit = raw["transfer_kit"]
        yield {"estimate": estimate_markdown(services, raw["dataset_id"], raw["base_model"], hyper_values, kit)}

    estimate_in = {"dataset_id": c["dataset_id"], "base_model": c["base_model"], "transfer_kit": c["transfer_kit"]}
    estimate_in |= hyper_in
    preset_event = bind(
        c["preset"].change, on_preset, {"preset": c["preset"], "variant": c["variant"]}, hyper_in | variant_in
    )
    # A first estimate on a new shape times a real step (seconds on a CPU): run one at a time, and
    # only for the latest form values, so typing in a field never queues a measurement per keystroke.
    latest_only = {"trigger_mode": "always_last", "concurrency_limit": 1, "concurrency_id": "train-estimate"}
    bind(
        preset_event.then,
        on_estimate,
        estimate_in,
        {"estimate": c["estimate"]},
        concurrency_limit=1,
        concurrency_id="train-estimate",
    )
    bind(c["dataset_id"].change, on_estimate, estimate_in, {"estimate": c["estimate"]}, **latest_only)
    # the kit is its own part of the estimate: ticking it on or off adds or drops it
    bind(c["transfer_kit"].change, on_estimate, estimate_in, {"estimate": c["estimate"]}, **latest_only)
    for field in (
        "max_steps",
        "epochs",
        "batch_size",
        "grad_accum",
        "max_length",
        "validation_fraction",
        "eval_every",
        "max_eval_rows",
    ):
        bind(
            hyper.widgets[field].input,
            on_estimate,
            estimate_in,
            {"estimate": c["estimate"]},
            show_progress="hidden",
            **latest_only,
        )

    def on_tab() -> dict[str, Any]:
        return {
            "dataset_id": gr.update(choices=dataset_choices(services)),
            "base_model": gr.update(choices=train_base_choices(services)),
        }

    bind(tab.select, on_tab, {}, {k: c[k] for k in ("dataset_id", "base_model")})
