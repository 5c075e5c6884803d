"""`studio sweep`: search training and variant settings with Optuna; every trial is a train job."""

from __future__ import annotations

from typing import Any

import click
from pydantic import ValidationError

from studio.cli.common import echo_queue_notice, inline_option, services
from studio.errors import StudioError
from studio.schema import SweepRequest, TrainingHyperParams, format_validation_error
from studio.sweeps.placement import placement_sentence, trials_placement


class TrialEventPrinter:
    """Prints each new line of the sweep job's log (a trial started, pruned, finished), never silent."""

    def __init__(self, svc) -> None:
        self.svc = svc
        self.seen: set[int] = set()

    def __call__(self, job) -> None:
        for line in self.svc.jobs.logs(job.id):
            if line.id not in self.seen:
                self.seen.add(line.id)
                click.echo(f"sweep {job.id}: {line.message}")


@click.command()
@click.option("--dataset", "dataset_id", required=True, type=int, help="A registered dataset id.")
@click.option("--variant", default="lora", show_default=True, help="Variant name (see `studio variants`).")
@click.option("--base", "base_model", default=None, help="Base model (default: the bundled chat model).")
@click.option(
    "--param",
    "params",
    multiple=True,
    help="A searched setting: NAME=log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH, logint:LOW:HIGH or cat:A,B,C "
    "(repeatable), e.g. learning_rate=log:1e-5:1e-3 r=int:4:32 lora_dropout=cat:0,0.05,0.1.",
)
@click.option(
    "--compare",
    "compare",
    default=None,
    help="Compare variants instead of searching: comma-separated names (lora,dora,pissa), one trial each at the "
    "same budget (data, seed, steps, validation split), no pruning; prints the comparison table.",
)
@click.option("--steps", "max_steps", default=None, type=int, help="Training steps of every trial (max_steps).")
@click.option(
    "--preset",
    "variant_preset",
    default=None,
    help="A variant preset (e.g. small-model) for each variant that declares it.",
)
@click.option("--set", "assignments", multiple=True, help="key=value fixed for every trial (as `studio train --set`).")
@click.option("--trials", "n_trials", default=20, show_default=True, type=int, help="Trials in all.")
@click.option("--parallel", default=1, show_default=True, type=int, help="Trials running at once.")
@click.option("--hours", "max_hours", default=None, type=float, help="No new trial after this many hours.")
@click.option("--pruner", type=click.Choice(["median", "hyperband", "none"]), default="median", show_default=True)
@click.option("--objective", type=click.Choice(["eval_loss", "eval_accuracy"]), default="eval_loss", show_default=True)
@click.option("--name", default=None, help="Name of the sweep.")
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--wait", is_flag=True, help="Wait for the sweep, printing each trial event.")
@inline_option
def sweep(dataset_id, variant, base_model, params, compare, max_steps, variant_preset, assignments, n_trials, parallel, max_hours, pruner, objective, name, seed, wait, inline) -> None:  # fmt: skip
    """Search a variant's and the training's settings (Optuna TPE, with pruning); prints the best trial.

    With --compare, run each listed variant once at the same budget and print the comparison table.
    """
    from studio.cli.train import parse_assignments
    from studio.schema import Choices
    from studio.sweeps.space import parse_param
    from studio.variants.registry import get_variant

    compared = [v.strip() for v in (compare or "").split(",") if v.strip()]
    if bool(compared) == bool(params):
        raise StudioError("give the settings to search (--param ...) or the variants to compare (--compare a,b), one")
    svc = services()
    if inline:
        from studio.jobs.inline import check_inline_allowed

        check_inline_allowed(svc.settings)
    names = compared or [variant]
    # A fixed variant parameter must be one every compared variant has.
    shared = set.intersection(*(set(get_variant(v).Params.model_fields) for v in names))
    hyper, variant_params = parse_assignments(assignments, shared)
    hyper.setdefault("validation_fraction", 0.1)  # trials are compared on validation
    if max_steps is not None:
        hyper["max_steps"] = max_steps
    task = svc.datasets.get(dataset_id).report.get("task", "causal-lm")
    fields: dict[str, Any] = dict(
        name=name,
        dataset_id=dataset_id,
        base_model=base_model or svc.settings.default_base_model,
        task=task,
        variant_params=variant_params,
        variant_preset=variant_preset,
        hyper=TrainingHyperParams(**hyper),
        parallel=parallel,
        max_hours=max_hours,
        objective=objective,
        # --inline runs the sweep here; queued, its trials go to other workers only when enough are online.
        trials_on="here" if inline else trials_placement(svc.registry, svc.settings, parallel),
        seed=seed,
    )
    try:
        if compared:
            request = SweepRequest(mode="compare", space={"variant": Choices(choices=compared)}, **fields)
        else:
            space = dict(parse_param(p) for p in params)
            request = SweepRequest(variant=variant, space=space, n_trials=n_trials, pruner=pruner, **fields)
    except ValidationError as exc:
        raise StudioError(format_validation_error(exc)) from None
    job = svc.jobs.submit(request)
    if compared:
        click.echo(f"queued comparison sweep job {job.id}: {', '.join(compared)}, {parallel} at a time")
    else:
        click.echo(f"queued sweep job {job.id}: {n_trials} trials of {variant}, {parallel} at a time, pruner {pruner}")
    if not inline:
        click.echo(f"its trials run {placement_sentence(request.trials_on)}")
    echo_queue_notice(job)
    if not (wait or inline):
        return
    printer = TrialEventPrinter(svc)
    if inline:
        from studio.jobs.inline import run_job_inline

        job = run_job_inline(job.id, svc.registry, svc.settings, lambda jid: svc.jobs.wait(jid, on_update=printer))
    else:
        job = svc.jobs.wait(job.id, on_update=printer)
    printer(job)
    if job.status != "succeeded":
        raise StudioError(f"sweep job {job.id} {job.status}" + (f": {job.error}" if job.error else ""))
    result = job.result
    if compared:
        from studio.comparison import markdown_table
        from studio.sweeps.compare import comparison_report

        report = comparison_report(svc.registry, job.id)
        click.echo(markdown_table(report["headers"], report["rows"]))
        return
    click.echo(
        f"best trial {result.get('best_trial')}: {objective} {result.get('best_value')} with {result.get('best_params')}; "
        f"adapter {result.get('best_adapter_id')} (job {result.get('best_job_id')})"
    )
