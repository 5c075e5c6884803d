"""`studio eval`: submit an evaluation of an adapter (or a bare base model) on a dataset."""

from __future__ import annotations

from pathlib import Path

import click
from pydantic import ValidationError

from studio.cli.common import echo_queue_notice, inline_option, services, wait_until_succeeded
from studio.errors import StudioError
from studio.schema import EvalRequest, format_validation_error

METRICS = ("loss", "exact_match", "accuracy", "rouge_l")


@click.command("eval")
@click.argument("adapter_id", type=int, required=False)
@click.option("--base", "base_model", default=None, help="Evaluate this bare base model instead of an adapter.")
@click.option("--dataset", "dataset_ref", required=True, help="A registered dataset id, or a file to import first.")
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    type=click.Choice(METRICS),
    help="Metric to compute (repeatable). Default: loss, plus accuracy on classification datasets.",
)
@click.option("--max-examples", default=200, show_default=True, type=int, help="Evaluate the first N rows.")
@click.option(
    "--max-new-tokens",
    default=None,
    type=int,
    help="Generation budget per answer. Default: sized from the dataset (1.25 × the longest reference + 8, capped).",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--rank",
    "ranks",
    multiple=True,
    type=click.IntRange(min=1),
    help="DyLoRA only: also measure the loss at this rank (repeatable: metric vs rank).",
)
@click.option("--wait/--no-wait", default=False, help="Wait for the job and print its metrics.")
@inline_option
def eval_cmd(
    adapter_id, base_model, dataset_ref, metrics, max_examples, max_new_tokens, seed, ranks, wait, inline
) -> None:
    """Evaluate ADAPTER_ID (or --base MODEL) on a dataset: loss, exact_match, accuracy, rouge_l."""
    from studio.evaluation.examples import check_metrics
    from studio.jobs.inline import check_inline_allowed

    if (adapter_id is None) == (base_model is None):
        raise StudioError("give either an ADAPTER_ID or --base MODEL (not both)")
    svc = services()
    if inline:
        check_inline_allowed(svc.settings)
    dataset = svc.datasets.get(_dataset_id(svc, dataset_ref))
    kind = _kind(dataset)
    chosen = list(dict.fromkeys(metrics)) or (["loss", "accuracy"] if kind == "classification" else ["loss"])
    check_metrics(chosen, kind, f"{dataset.id} ({dataset.name})")  # refuse now, not on the worker
    try:
        request = EvalRequest(
            adapter_id=adapter_id,
            base_model=base_model,
            dataset_id=dataset.id,
            metrics=chosen,
            max_examples=max_examples,
            max_new_tokens=max_new_tokens,
            seed=seed,
            ranks=list(ranks),
        )
    except ValidationError as exc:
        raise StudioError(format_validation_error(exc)) from None
    job = svc.jobs.submit(request)
    subject = f"adapter {adapter_id}" if adapter_id is not None else f"base model {base_model}"
    click.echo(f"queued evaluation job {job.id} ({subject} on dataset {dataset.id}: {', '.join(chosen)})")
    echo_queue_notice(job)
    if not (wait or inline):
        return
    job = wait_until_succeeded(svc, job.id, inline=inline)
    for name, value in (job.result or {}).get("metrics", {}).items():
        click.echo(f"{name:<12} {value:.4f}")


def _kind(dataset) -> str:
    """The dataset kind of studio.evaluation.examples, from the registry row (no file read)."""
    if (dataset.report or {}).get("task") == "classification":
        return "classification"
    return "text" if dataset.format == "text" else "chat"


def _dataset_id(svc, ref: str) -> int:
    if ref.isdigit():
        return int(ref)
    path = Path(ref)
    if not path.is_file():
        raise StudioError(f"--dataset {ref!r} is neither a dataset id nor an existing file")
    row = svc.datasets.add(path)
    click.echo(f"imported {path.name} as dataset {row.id} ({row.format}, {row.rows} rows)")
    return row.id
