"""Federated tab: split a dataset among simulated clients, preview each client's label mix, run Flower rounds,
and follow the selected federated job's per-round charts (validation loss, clients' losses, ε, bytes).

Only shown where this installation has the federated job kind (``studio.federated.job``, needs ``flwr``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import gradio as gr

from app.forms import SchemaForm
from app.tab_datasets import dataset_choices
from app.ui import (
    bind,
    bind_submit,
    module_installed,
    new_submission_token,
    queue_wait_sentence,
    refreshed_jobs,
)
from studio.errors import ValidationFailed
from studio.schema import FederatedRequest, parse_request
from studio.services.container import Services

TITLE = "Federated"
ELEM_ID = "tab-federated"
FORM_FIELDS = (
    "strategy",
    "clients",
    "split",
    "alpha",
    "label_column",
    "client_column",
    "rounds",
    "local_steps",
    "fraction",
    "r",
    "lora_alpha",
    "learning_rate",
    "batch_size",
    "max_length",
    "fair_solver",
    "fair_lambda",
    "name",
    "seed",
)


def available() -> bool:
    """True when the federated job kind exists in this installation (Flower installed)."""
    return module_installed("studio.federated.job") and module_installed("flwr")


def privacy_block(noise: Any, epsilon: Any, clip: Any, delta: Any) -> dict[str, Any] | None:
    """The request's privacy block from the DP widgets (both σ and ε empty: no DP)."""
    noise = None if noise in (None, "") else float(noise)
    epsilon = None if epsilon in (None, "") else float(epsilon)
    if noise is None and epsilon is None:
        return None
    return {
        "noise_multiplier": noise,
        "target_epsilon": epsilon,
        "max_grad_norm": float(clip or 1.0),
        "delta": float(delta or 1e-5),
    }


def make_request(dataset_id: Any, base_model: str | None, options: dict[str, Any], privacy: dict | None):
    """A validated FederatedRequest (ValidationFailed in plain words otherwise)."""
    if not dataset_id:
        raise ValidationFailed("Dataset: choose a dataset (add one in the Datasets tab).")
    data = {
        "kind": "federated",
        "dataset_id": int(dataset_id),
        "base_model": base_model or "",
        "privacy": privacy,
        **options,
    }
    request = parse_request(data)
    assert isinstance(request, FederatedRequest)
    return request


def preview(services: Services, request: FederatedRequest) -> tuple[Any, str]:
    """(the client-mix chart, one line per client) of the split the job will use."""
    from studio.federated.charts import client_mix_chart
    from studio.federated.planning import load_rows, preview_split

    split = preview_split(load_rows(services.datasets.get(request.dataset_id), request), request)
    held = len(split.validation)
    text = f"{held} row{'' if held == 1 else 's'} held out for the global validation loss.\n\n" + "\n".join(
        f"- {line}" for line in split.lines()
    )
    return client_mix_chart(split.mix, title=f"Rows per client and {request.label_column}"), text


def submit(services: Services, request: FederatedRequest, submission_token: str | None = None) -> str:
    """Queue the job (refused at once when a split or the privacy budget cannot work); returns a confirmation."""
    job = services.jobs.submit(request, submission_token=submission_token)
    dp = " with DP-SGD" if request.privacy else ""
    return (
        f"Queued federated job #{job.id} ({request.strategy}, {request.clients} clients, {request.rounds} rounds{dp}); "
        f"choose it below to follow its rounds.{queue_wait_sentence(job)}"
    )


def job_choices(services: Services) -> list[tuple[str, int]]:
    """The recent federated jobs, newest first."""
    return [
        (f"#{job.id} {job.request.get('strategy', '')} · {job.status}", job.id)
        for job in services.jobs.list(kind="federated", limit=50)
    ]


def job_charts(services: Services, job_id: Any) -> dict[str, Any]:
    """The per-round charts of ``job_id`` from its metrics in the registry (empty charts when none is chosen)."""
    from studio.federated.charts import round_charts

    points = services.jobs.metrics(int(job_id)) if job_id else []  # all: client_<k>_loss names depend on K
    return round_charts(points, title=f"Job #{job_id}: " if job_id else "")


def build(services: Services, tab: gr.Tab, demo: gr.Blocks) -> None:
    """Lay out the tab and wire its events."""
    c: dict[str, Any] = {}
    gr.Markdown(
        "Train one adapter **without pooling the data**: the dataset's rows are dealt to simulated clients "
        "(at random, by a label with a Dirichlet α — small α gives each client few labels — or by a column "
        "naming the client). Each round, the sampled clients train the shared LoRA on their own rows and a "
        "Flower server combines them: *fedit* averages, *ffa* (FFA-LoRA) trains only B and sends half the "
        "bytes, *flora* stacks the clients' LoRAs, *lora_fair* corrects the average. Set a noise σ or a "
        "budget ε for differential privacy on every client. The result is a standard LoRA adapter.",
        elem_id="federated-intro",
    )
    with gr.Row():
        c["dataset"] = gr.Dropdown(label="Dataset", choices=[], elem_id="federated-dataset")
        c["base"] = gr.Textbox(label="Base model", value=services.settings.default_base_model, elem_id="federated-base")
    with gr.Row(elem_classes=["form-grid"]):
        form = SchemaForm(FederatedRequest.model_json_schema(), "federated", only=FORM_FIELDS)
    with gr.Accordion("Differential privacy (DP-SGD on every client)", open=False), gr.Row():
        c["noise"] = gr.Number(label="Noise σ", value=None, info="Empty with ε set: the smallest σ that fits.")
        c["epsilon"] = gr.Number(label="Budget ε", value=None, info="Per client over the whole run.")
        c["clip"] = gr.Number(label="Clip C", value=1.0, info="Each row's gradient is clipped to this norm.")
        c["delta"] = gr.Number(label="δ", value=1e-5)
    with gr.Row():
        c["preview_btn"] = gr.Button("Preview split", elem_id="federated-preview")
        c["submit"] = gr.Button("Start federated job", variant="primary", elem_id="federated-submit")
    c["status"] = gr.Markdown(elem_id="federated-status")
    c["mix"] = gr.Plot(label="Client mix", elem_id="federated-mix")
    c["submission_token"] = gr.State(new_submission_token)
    gr.Markdown("### Rounds of a federated job")
    c["job"] = gr.Dropdown(label="Federated job", choices=[], elem_id="federated-job")
    with gr.Row():
        c["loss"] = gr.Plot(label="Loss", elem_id="federated-loss")
        c["eps"] = gr.Plot(label="ε spent", elem_id="federated-epsilon")
    c["bytes"] = gr.Plot(label="Bytes", elem_id="federated-bytes")

    def request_of(dataset, base, noise, epsilon, clip, delta, raw: dict[str, Any]) -> FederatedRequest:
        options = form.values([raw[f"opt.{n}"] for n in form.names])
        return make_request(dataset, base, options, privacy_block(noise, epsilon, clip, delta))

    def on_preview(dataset, base, noise, epsilon, clip, delta, **raw: Any) -> dict[str, Any]:
        chart, text = preview(services, request_of(dataset, base, noise, epsilon, clip, delta, raw))
        return {"mix": chart, "status": text}

    def on_submit(dataset, base, noise, epsilon, clip, delta, submission_token=None, **raw: Any) -> dict[str, Any]:
        request = request_of(dataset, base, noise, epsilon, clip, delta, raw)
        line = submit(services, request, submission_token)
        choices = job_choices(services)
        return {"status": f"✓ {line}", "job": gr.update(choices=choices, value=choices[0][1] if choices else None)}

    def on_job(job_id) -> dict[str, Any]:
        charts = job_charts(services, job_id)
        return {"loss": charts["loss"], "eps": charts["epsilon"], "bytes": charts["bytes"]}

    def on_tab() -> dict[str, Any]:
        return {
            "dataset": gr.update(choices=dataset_choices(services)),
            "job": gr.update(choices=job_choices(services)),
        }

    fields = ("dataset", "base", "noise", "epsilon", "clip", "delta")
    inputs = {k: c[k] for k in fields} | {f"opt.{n}": w for n, w in form.widgets.items()}
    bind(c["preview_btn"].click, on_preview, inputs, {k: c[k] for k in ("mix", "status")}, "status")
    bind_submit(c["submit"], on_submit, inputs, {k: c[k] for k in ("status", "job")}, "status", c["submission_token"])
    chart_outputs = {k: c[k] for k in ("loss", "eps", "bytes")}
    bind(c["job"].change, on_job, {"job_id": c["job"]}, chart_outputs)
    bind(tab.select, on_tab, {}, {k: c[k] for k in ("dataset", "job")})
    # live: the chosen job's charts follow its rounds, and the picker's labels each job's status
    timer = gr.Timer(5.0)
    bind(timer.tick, on_job, {"job_id": c["job"]}, chart_outputs, show_progress="hidden")
    bind(timer.tick, partial(refreshed_jobs, job_choices, services), {}, {"job": c["job"]}, show_progress="hidden")
