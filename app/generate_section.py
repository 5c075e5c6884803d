"""ICM-LoRA in the UI: "Train a generator" and "Generate an adapter" forms (generator and generate jobs).

The Transfer & Generate tab calls :func:`build_generate_section` inside its layout; the
forms come from :class:`~studio.schema.GeneratorRequest` and :class:`~studio.schema.GenerateRequest`
(pickers for the ids, the rest generated from the schemas).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.forms import SchemaForm
from app.ui import PICKER_LIMIT, bind, bind_submit, latest_adapters, new_submission_token, queue_wait_sentence
from studio.errors import ValidationFailed
from studio.schema import AdapterFilters, GenerateRequest, GeneratorRequest, parse_request

GENERATOR_VARIANT = "icm_generator"  # studio.adapter_generation.jobs.GENERATOR_VARIANT (that module imports torch code)
GENERATOR_FIELDS = ("preset", "epochs", "learning_rate", "examples", "seed", "name")
GENERATE_FIELDS = ("examples", "seed", "name")


def source_choices(services: Any) -> list[tuple[str, int]]:
    """The newest adapters a generator can learn (no generators), labelled with base and training dataset."""
    rows = [r for r in latest_adapters(services) if r.variant != GENERATOR_VARIANT]
    return [(source_label(r), r.id) for r in rows]


def source_label(row: Any) -> str:
    """``#3 name (lora, base, dataset #2)``; an adapter with no training dataset (a merge, a transfer, a deleted
    dataset) says so in words, since the generator refuses it: it has no examples of its task."""
    dataset = f"dataset #{row.dataset_id}" if row.dataset_id else "no training dataset: cannot be a task"
    return f"#{row.id} {row.name} ({row.variant}, {row.base_model}, {dataset})"


def generator_choices(services: Any) -> list[tuple[str, int]]:
    """The newest registered generators."""
    rows = services.adapters.page(AdapterFilters(variant=GENERATOR_VARIANT), limit=PICKER_LIMIT)[0]
    return [(f"#{r.id} {r.name} ({r.base_model}, {len(r.parents or [])} tasks)", r.id) for r in rows]


def dataset_choices(services: Any) -> list[tuple[str, int]]:
    return [(f"#{d.id} {d.name} ({d.format}, {d.rows} rows)", d.id) for d in services.datasets.list()]


def submit_generator(
    services: Any, adapters: list[int] | None, options: dict[str, Any], token: str | None = None
) -> str:
    """Validate and queue a generator job; returns a confirmation line (refusals: ValidationFailed in words)."""
    chosen = [int(a) for a in adapters or []]
    if len(chosen) < 2:
        raise ValidationFailed("Adapters: choose the adapters of at least two tasks, all of one base model.")
    request: GeneratorRequest = parse_request({"kind": "generator", "adapter_ids": chosen, **options})
    job = services.jobs.submit(request, submission_token=token)
    return (
        f"Queued generator job #{job.id} over {', '.join(f'#{i}' for i in chosen)} ({request.preset}, "
        f"{request.epochs} epochs); the generator then appears under Generate an adapter.{queue_wait_sentence(job)}"
    )


def submit_generate(
    services: Any, generator: int | None, dataset: int | None, options: dict[str, Any], token: str | None = None
) -> str:
    """Validate and queue a generate job; returns a confirmation line."""
    if generator is None:
        raise ValidationFailed("Generator: choose a trained generator (train one above).")
    if dataset is None:
        raise ValidationFailed("Dataset: choose a dataset with about 30 examples of the new task.")
    request: GenerateRequest = parse_request(
        {"kind": "generate", "generator_id": int(generator), "dataset_id": int(dataset), **options}
    )
    job = services.jobs.submit(request, submission_token=token)
    return (
        f"Queued generate job #{job.id}; the new adapter appears in Adapters, Evaluate and the Playground."
        f"{queue_wait_sentence(job)}"
    )


def build_generate_section(services: Any, tab: gr.Tab, demo: gr.Blocks) -> dict[str, Any]:
    """Lay out both forms (inside the caller's layout) and wire them; returns the components by name."""
    c: dict[str, Any] = {}
    gr.Markdown(
        "### Generate adapters (ICM-LoRA)\n"
        "A **generator** learns the adapters of several tasks of one base model (train them with *Keep "
        "checkpoints* so that it sees each task's adapters along training). Given about 30 examples of a new "
        "task, it then writes an adapter for it without training. Evaluate a generated adapter against the "
        "bare base before relying on it.",
        elem_id="generate-intro",
    )
    with gr.Accordion("Train a generator", open=True):
        c["sources"] = gr.Dropdown(
            label="Adapters (one per task)",
            choices=[],
            multiselect=True,
            filterable=True,
            elem_id="generator-adapters",
            info=f"The newest {PICKER_LIMIT} adapters; each one's training dataset gives its task's examples.",
        )
        with gr.Row(elem_classes=["form-grid"]):
            gen_form = SchemaForm(GeneratorRequest.model_json_schema(), "generator", only=GENERATOR_FIELDS)
        c["train"] = gr.Button("Train generator", variant="primary", elem_id="generator-submit")
        c["train_status"] = gr.Markdown(elem_id="generator-status")
        c["train_token"] = gr.State(new_submission_token)
    with gr.Accordion("Generate an adapter", open=True):
        with gr.Row():
            c["generator"] = gr.Dropdown(label="Generator", choices=[], elem_id="generate-generator")
            c["dataset"] = gr.Dropdown(label="Examples of the new task", choices=[], elem_id="generate-dataset")
        with gr.Row(elem_classes=["form-grid"]):
            make_form = SchemaForm(GenerateRequest.model_json_schema(), "generate", only=GENERATE_FIELDS)
        c["generate"] = gr.Button("Generate adapter", variant="primary", elem_id="generate-submit")
        c["generate_status"] = gr.Markdown(elem_id="generate-status")
        c["generate_token"] = gr.State(new_submission_token)

    def on_train(sources, submission_token=None, **raw: Any) -> dict[str, Any]:
        options = gen_form.values([raw[f"opt.{n}"] for n in gen_form.names])
        return {"train_status": "✓ " + submit_generator(services, sources, options, submission_token)}

    def on_generate(generator, dataset, submission_token=None, **raw: Any) -> dict[str, Any]:
        options = make_form.values([raw[f"opt.{n}"] for n in make_form.names])
        return {"generate_status": "✓ " + submit_generate(services, generator, dataset, options, submission_token)}

    def on_tab() -> dict[str, Any]:
        return {
            "sources": gr.update(choices=source_choices(services)),
            "generator": gr.update(choices=generator_choices(services)),
            "dataset": gr.update(choices=dataset_choices(services)),
        }

    train_inputs = {"sources": c["sources"]} | {f"opt.{n}": w for n, w in gen_form.widgets.items()}
    bind_submit(
        c["train"], on_train, train_inputs, {"train_status": c["train_status"]}, "train_status", c["train_token"]
    )
    make_inputs = {"generator": c["generator"], "dataset": c["dataset"]} | {
        f"opt.{n}": w for n, w in make_form.widgets.items()
    }
    bind_submit(
        c["generate"],
        on_generate,
        make_inputs,
        {"generate_status": c["generate_status"]},
        "generate_status",
        c["generate_token"],
    )
    bind(tab.select, on_tab, {}, {k: c[k] for k in ("sources", "generator", "dataset")})
    c["forms"] = {"generator": gen_form, "generate": make_form}
    return c
