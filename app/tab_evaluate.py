"""Evaluate tab: compare the base model and several adapters of it on one dataset, side by side.

Only shown when this installation has the eval job kind (``studio.evaluation.job``).
One result view: the metrics table (direction, each model, best marked, Δ vs base,
cut-off answers), a bar chart per metric and the sample answers of every model; for a
classification dataset also the ROC curves (baseline included) and confusion matrices, and under
the table one sentence per paired comparison (is an adapter's accuracy gap to the baseline, the
base or another adapter more than the luck of the rows?).
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from app.forms import SchemaForm
from app.tab_datasets import dataset_choices
from app.ui import (
    bind,
    bind_submit,
    latest_adapters,
    module_installed,
    new_submission_token,
    queue_wait_sentence,
)
from studio.charts import comparison_bars, empty_figure
from studio.charts_classification import confusion_figure, roc_figure
from studio.evaluation.comparison import column_name, format_delta, format_value, is_base, paired_lines
from studio.schema import EvalRequest
from studio.services.container import Services

TITLE = "Evaluate"
ELEM_ID = "tab-evaluate"
FORM_FIELDS = ("metrics", "max_examples", "max_new_tokens", "seed", "include_baseline", "baseline_dataset_id")
SAMPLE_CHARS = 400  # long worked answers are cut in the table; the job result keeps them whole
UNBROKEN_CHARS = 60  # a string with no space to wrap at (a sequence) is shown up to here


def available() -> bool:
    """True when the eval job kind exists in this installation (no dead buttons otherwise)."""
    return module_installed("studio.evaluation.job")


def adapter_choices(services: Services, base_model: str | None = None) -> list[tuple[str, int]]:
    """The newest adapters (of ``base_model`` when given): a picker never lists 100,000 of them."""
    rows = latest_adapters(services, base_model=base_model or None)
    return [(f"#{r.id} {r.name} ({r.variant})", r.id) for r in rows]


def dataset_label(dataset_id: Any, names: dict[int, str]) -> str:
    """``#1 colors``: the id the pickers show, with the name (``#1 (deleted)`` once the dataset is gone)."""
    if dataset_id is None:
        return ""
    name = names.get(int(dataset_id))
    return f"#{dataset_id} {name}" if name is not None else f"#{dataset_id} (deleted)"


def _dataset_names(services: Services, jobs: list[Any]) -> dict[int, str]:
    """The names of the datasets ``jobs`` evaluated on, read in one query (a refresh lists up to 50 jobs)."""
    ids = [int(job.request["dataset_id"]) for job in jobs if job.request.get("dataset_id") is not None]
    return services.registry.dataset_names(ids)


def results_rows(services: Services) -> list[list[Any]]:
    """Recent eval jobs: status, the models compared and the dataset (``#1 colors``)."""
    jobs = services.jobs.list(kind="eval", limit=50)
    names = _dataset_names(services, jobs)
    out = []
    for job in jobs:
        request = job.request
        ids = ([request["adapter_id"]] if request.get("adapter_id") else []) + list(request.get("adapter_ids") or [])
        models = ([request["base_model"]] if request.get("base_model") else []) + [f"#{i}" for i in ids]
        dataset = dataset_label(request.get("dataset_id"), names)
        out.append([job.id, job.status, ", ".join(models), dataset, job.error or ""])
    return out


def job_choices(services: Services) -> list[tuple[str, int]]:
    """Finished eval jobs whose comparison can be shown, newest first."""
    jobs = services.jobs.list(kind="eval", status=["succeeded"], limit=50)
    names = _dataset_names(services, jobs)
    return [(f"job #{j.id} on dataset {dataset_label(j.request.get('dataset_id'), names)}", j.id) for j in jobs]


def pick_job(choices: list[tuple[str, int]], current: Any, following: bool) -> int | None:
    """The job the "Result of" picker should show.

    While the tab follows (nothing was picked by hand), the newest finished job: the one just
    submitted appears by itself when it finishes. A job picked by hand is kept for as long as
    it is listed; one that is no longer listed (deleted) is no pick, so the newest is shown.
    """
    ids = [job_id for _, job_id in choices]
    if not following and current in ids:
        return current
    return ids[0] if ids else None


def job_picker(services: Services, current: Any, following: bool) -> dict[str, Any]:
    """Fresh choices of the picker, with the job to show (see :func:`pick_job`) and whether the tab still follows.

    The value is only sent when it changes: the picker's ``change`` event then draws that
    job's comparison, once, rather than on every refresh.
    """
    choices = job_choices(services)
    current = int(current) if current else None
    picked = pick_job(choices, current, following)
    job = gr.update(choices=choices) if picked == current else gr.update(choices=choices, value=picked)
    # A hand pick that is gone (deleted) no longer pins the picker: follow the newest again.
    return {"job": job, "following": following or picked != current}


def submit_eval(
    services: Services,
    adapters: list[int] | None,
    base_model: str | None,
    dataset: int | None,
    options: dict,
    submission_token: str | None = None,
) -> str:
    """Validate and queue one comparison job (the base, when named, and the chosen adapters).

    A repeated submit with the same ``submission_token`` (a double click) finds the job the first one queued.
    """
    if not dataset:
        raise gr.Error("Choose a dataset to evaluate on.")
    ids = [int(a) for a in adapters or []]
    if not ids and not base_model:
        raise gr.Error("Choose adapters, a base model, or both.")
    request = {"kind": "eval", "dataset_id": int(dataset), "adapter_ids": ids, "base_model": base_model or None}
    request.update(options)
    # Named after the models, dataset and metrics by the job service.
    job = services.jobs.submit(request, submission_token=submission_token)
    return (
        f"Queued evaluation job #{job.id}; its comparison is shown below when it finishes "
        f"(unless you picked another job under Result of).{queue_wait_sentence(job)}"
    )


def comparison_table(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of the side-by-side table: metric, better, each model (best ★), Δ vs base."""
    models = result.get("models") or []
    keys = [m["key"] for m in models]
    deltas = [k for k in keys if not is_base(k)] if any(is_base(k) for k in keys) else []
    headers = ["metric", "better", *map(column_name, keys), *(f"Δ {column_name(k)} vs base" for k in deltas)]
    rows = []
    for row in result.get("comparison") or []:
        cells = [row["metric"], row["direction"]]
        cells += [format_value(row["values"].get(k)) + (" ★" if k in row["best"] else "") for k in keys]
        cells += [format_delta(row["delta_vs_base"].get(k)) for k in deltas]
        rows.append(cells)
    if result.get("generated"):
        cut = [str(m.get("truncated_answers") or 0) for m in models]
        rows.append([f"answers cut off ({result.get('max_new_tokens')} tokens)", "lower", *cut, *[""] * len(deltas)])
    return headers, rows


def paired_markdown(result: dict[str, Any]) -> str:
    """The paired comparisons under the table: is each accuracy gap more than the luck of the rows?"""
    lines = paired_lines(result)
    if not lines:
        return ""
    # Names come from model keys (a base may be a server path): escaped so that Markdown shows them as text.
    items = "\n".join(f"- {html.escape(line, quote=False)}" for line in lines)
    return f"**Is the difference real?** (paired on the same rows)\n\n{items}"


def _sample_text(value: Any) -> str:
    """A table cell's text: cut at SAMPLE_CHARS, and a long unbroken string (a DNA sequence) cut to its start and
    length, since a cell that cannot wrap leaves the table blank."""
    text = str(value)
    if len(text) > UNBROKEN_CHARS and not any(ch.isspace() for ch in text[:SAMPLE_CHARS]):
        return f"{text[:UNBROKEN_CHARS]}… ({len(text):,} characters)"
    return text[:SAMPLE_CHARS]


def samples_table(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of the samples: prompt, reference, then each model's answer with its score."""
    keys = [m["key"] for m in result.get("models") or []]
    rows = []
    for sample in result.get("sample_table") or []:
        # A classification dataset's labels may be numbers (0 / 1): shown as text, not sliced as strings.
        cells = [_sample_text(sample["prompt"]), _sample_text(sample["reference"])]
        for key in keys:
            answer = sample["answers"].get(key) or {}
            scores = [f"{k} {answer[k]:.3g}" for k in ("exact_match", "rouge_l") if k in answer]
            if "correct" in answer:
                scores.append("correct" if answer["correct"] else "wrong")
            if answer.get("truncated"):
                scores.append("cut off")
            text = _sample_text(answer.get("prediction", ""))
            cells.append(f"{text}\n[{', '.join(scores)}]" if scores else text)
        rows.append(cells)
    return ["prompt", "reference", *map(column_name, keys)], rows


def eval_results_markdown(results: list[Any]) -> str:
    """A small table of an adapter's stored eval scores by dataset (for the Adapters tab's details)."""
    if not results:
        return ""
    lines = [
        "**Evaluations** (latest per dataset and metric):",
        "",
        "| dataset | metric | value | rows |",
        "|---|---|---|---|",
    ]
    for r in results:
        cut = f" ({r.truncated} cut off at {r.max_new_tokens} tokens)" if r.truncated else ""
        lines.append(f"| #{r.dataset_id} | {r.metric} | {format_value(r.value)}{cut} | {r.examples} |")
    return "\n\n" + "\n".join(lines)


def show_result(services: Services, job_id: int | None) -> dict[str, Any]:
    """The comparison view of one finished eval job."""
    if not job_id:
        return {
            "table": gr.update(value=[], headers=["metric"]),
            "paired": "",
            "chart": empty_figure("Pick a finished evaluation."),
            "roc": gr.update(value=None, visible=False),
            "confusion": gr.update(value=None, visible=False),
            "samples": gr.update(value=[], headers=["prompt"], visible=False),
        }
    result = services.jobs.get(int(job_id)).result or {}
    headers, rows = comparison_table(result)
    sample_headers, sample_rows = samples_table(result)
    # ROC and confusion charts only where a classifier was scored (hidden for text generation).
    classified = result.get("task") == "classification" and any(m.get("confusion") for m in result.get("models") or [])
    return {
        "table": gr.update(value=rows, headers=headers),
        "paired": paired_markdown(result),
        "chart": comparison_bars(result, title=f"Evaluation job #{job_id}"),
        "roc": gr.update(value=roc_figure(result) if classified else None, visible=classified),
        "confusion": gr.update(value=confusion_figure(result) if classified else None, visible=classified),
        # A result without sample answers (an older job, a baseline alone) shows no empty box.
        "samples": gr.update(value=sample_rows, headers=sample_headers, visible=bool(sample_rows)),
    }


def build(services: Services, tab: gr.Tab, demo: gr.Blocks) -> None:
    """Lay out the tab and wire its events."""
    c: dict[str, Any] = {}
    with gr.Row():
        c["base_model"] = gr.Textbox(
            label="Base model (empty: adapters only)", value=services.settings.default_base_model, elem_id="eval-base"
        )
        c["adapters"] = gr.Dropdown(label="Adapters to compare", choices=[], multiselect=True, elem_id="eval-adapters")
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
        headers=["job", "status", "models", "dataset", "error"],
        value=lambda: results_rows(services),
        interactive=False,
        elem_id="eval-results",
    )
    c["job"] = gr.Dropdown(label="Result of", choices=[], elem_id="eval-job")
    c["table"] = gr.Dataframe(headers=["metric"], interactive=False, elem_id="eval-comparison")
    c["paired"] = gr.Markdown(elem_id="eval-paired")
    c["chart"] = gr.Plot(elem_id="eval-chart")
    with gr.Row():
        c["roc"] = gr.Plot(elem_id="eval-roc", visible=False)
        c["confusion"] = gr.Plot(elem_id="eval-confusion", visible=False)
    c["samples"] = gr.Dataframe(headers=["prompt"], interactive=False, wrap=True, visible=False, elem_id="eval-samples")

    c["submission_token"] = gr.State(new_submission_token)  # a double click queues one evaluation
    # True until the user picks a job by hand: till then the picker shows the newest finished evaluation.
    c["following"] = gr.State(True)

    def on_submit(adapters, base_model, dataset, submission_token=None, **raw: Any) -> dict[str, Any]:
        options = form.values([raw[f"opt.{n}"] for n in form.names])
        return {
            "status": submit_eval(services, adapters, base_model, dataset, options, submission_token),
            "results": results_rows(services),
        }

    def on_tab(base_model, job, following) -> dict[str, Any]:
        return {
            "adapters": gr.update(choices=adapter_choices(services, base_model)),
            "dataset": gr.update(choices=dataset_choices(services)),
            "results": results_rows(services),
            **job_picker(services, job, following),
        }

    inputs = {k: c[k] for k in ("adapters", "base_model", "dataset")} | {f"opt.{n}": w for n, w in form.widgets.items()}
    # Errors go to the status line beside the button, not over the results; a double click runs once.
    bind_submit(
        c["submit"], on_submit, inputs, {k: c[k] for k in ("status", "results")}, "status", c["submission_token"]
    )
    picker = {"job": c["job"], "following": c["following"]}
    bind(
        tab.select,
        on_tab,
        {"base_model": c["base_model"]} | picker,
        {k: c[k] for k in ("adapters", "dataset", "results")} | picker,
    )
    bind(
        c["base_model"].change,
        lambda base_model: {"adapters": gr.update(choices=adapter_choices(services, base_model))},
        {"base_model": c["base_model"]},
        {"adapters": c["adapters"]},
    )

    def draw_result(job) -> dict[str, Any]:
        return show_result(services, job)

    # `change` also fires when a refresh sets the value: a job picked by the tab is drawn like a hand pick.
    bind(
        c["job"].change,
        draw_result,
        {"job": c["job"]},
        {k: c[k] for k in ("table", "paired", "chart", "roc", "confusion", "samples")},
    )

    # `input` fires only when the user picks (not when a refresh sets the value): that pick is kept from then on.
    bind(c["job"].input, picked_by_hand, {}, {"following": c["following"]}, show_progress="hidden")

    def refresh_results(job, following) -> dict[str, Any]:
        return {"results": results_rows(services), **job_picker(services, job, following)}

    bind(gr.Timer(5.0).tick, refresh_results, picker, {"results": c["results"]} | picker, show_progress="hidden")


def picked_by_hand() -> dict[str, Any]:
    """The user chose a job in "Result of": stop following the newest finished one."""
    return {"following": False}
