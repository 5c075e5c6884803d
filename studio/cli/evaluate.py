"""`studio eval`: evaluate a base model and/or adapters of it on a dataset, side by side."""

from __future__ import annotations

from pathlib import Path

import click
from pydantic import ValidationError

from studio.cli.common import inline_option, services, submit_and_wait
from studio.errors import StudioError
from studio.evaluation.comparison import comparison_lines
from studio.schema import EvalRequest, format_validation_error

METRICS = ("loss", "exact_match", "accuracy", "rouge_l")


@click.command("eval")
@click.argument("adapter_ids", type=int, nargs=-1)
@click.option(
    "--base",
    "base_model",
    default=None,
    help="Also evaluate this bare base model: the reference each adapter is compared against.",
)
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
@click.option(
    "--baseline",
    "include_baseline",
    is_flag=True,
    help="Classification: also fit a logistic regression on simple features (k-mers, length, longest ORF "
    "for DNA/RNA) on the training rows and show it beside the models.",
)
@click.option(
    "--baseline-dataset",
    "baseline_dataset_id",
    default=None,
    type=int,
    help="Dataset id the baseline is fit on. Default: the first adapter's training dataset.",
)
@click.option("--wait/--no-wait", default=False, help="Wait for the job and print its metrics.")
@inline_option
def eval_cmd(
    adapter_ids,
    base_model,
    dataset_ref,
    metrics,
    max_examples,
    max_new_tokens,
    seed,
    ranks,
    include_baseline,
    baseline_dataset_id,
    wait,
    inline,
) -> None:
    """Evaluate --base MODEL and/or ADAPTER_IDS on a dataset: loss, exact_match, accuracy, rouge_l.

    With several models (e.g. `studio eval --base MODEL 3 4 --dataset 1 --wait`) the result is a
    comparison table: each metric, which way is better, each model (best marked), Δ vs the base.
    """
    from studio.evaluation.examples import check_metrics
    from studio.jobs.inline import check_inline_allowed

    if not adapter_ids and base_model is None:
        raise StudioError("give adapter ids, --base MODEL, or both (to compare the adapters against their base)")
    svc = services()
    if inline:
        check_inline_allowed(svc.settings)
    dataset = svc.datasets.get(_dataset_id(svc, dataset_ref))
    kind = _kind(dataset)
    chosen = list(dict.fromkeys(metrics)) or (["loss", "accuracy"] if kind == "classification" else ["loss"])
    check_metrics(chosen, kind, f"{dataset.id} ({dataset.name})")  # refuse now, not on the worker
    try:
        request = EvalRequest(
            adapter_ids=list(adapter_ids),
            base_model=base_model,
            dataset_id=dataset.id,
            metrics=chosen,
            max_examples=max_examples,
            max_new_tokens=max_new_tokens,
            seed=seed,
            ranks=list(ranks),
            include_baseline=include_baseline or baseline_dataset_id is not None,
            baseline_dataset_id=baseline_dataset_id,
        )
    except ValidationError as exc:
        raise StudioError(format_validation_error(exc)) from None
    subjects = ([f"base model {base_model}"] if base_model else []) + [f"adapter {i}" for i in adapter_ids]
    job = submit_and_wait(
        svc, request, "evaluation", f"{', '.join(subjects)} on dataset {dataset.id}: {', '.join(chosen)}", wait, inline
    )
    if job is None:
        return
    for line in comparison_lines(job.result or {}):
        click.echo(line)


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
