"""`studio sweep`: search training and variant settings with Optuna; every trial is a train job."""

from __future__ import annotations

import click
from pydantic import ValidationError

from studio.cli.common import echo_queue_notice, inline_option, services
from studio.errors import StudioError
from studio.schema import SweepRequest, TrainingHyperParams, format_validation_error


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
    required=True,
    help="A searched setting: NAME=log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH, logint:LOW:HIGH or cat:A,B,C "
    "(repeatable), e.g. learning_rate=log:1e-5:1e-3 r=int:4:32 lora_dropout=cat:0,0.05,0.1.",
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
def sweep(dataset_id, variant, base_model, params, assignments, n_trials, parallel, max_hours, pruner, objective, name, seed, wait, inline) -> None:  # fmt: skip
    """Search a variant's and the training's settings (Optuna TPE, with pruning); prints the best trial."""
    from studio.cli.train import parse_assignments
    from studio.sweeps.space import parse_param
    from studio.variants.registry import get_variant

    svc = services()
    if inline:
        from studio.jobs.inline import check_inline_allowed

        check_inline_allowed(svc.settings)
    hyper, variant_params = parse_assignments(assignments, set(get_variant(variant).Params.model_fields))
    hyper.setdefault("validation_fraction", 0.1)  # trials are compared on validation
    task = svc.datasets.get(dataset_id).report.get("task", "causal-lm")
    try:
        request = SweepRequest(
            name=name,
            dataset_id=dataset_id,
            base_model=base_model or svc.settings.default_base_model,
            task=task,
            variant=variant,
            space=dict(parse_param(p) for p in params),
            variant_params=variant_params,
            hyper=TrainingHyperParams(**hyper),
            n_trials=n_trials,
            parallel=parallel,
            max_hours=max_hours,
            pruner=pruner,
            objective=objective,
            trials_on="here" if inline else "workers",
            seed=seed,
        )
    except ValidationError as exc:
        raise StudioError(format_validation_error(exc)) from None
    job = svc.jobs.submit(request)
    click.echo(f"queued sweep job {job.id}: {n_trials} trials of {variant}, {parallel} at a time, pruner {pruner}")
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
    click.echo(
        f"best trial {result.get('best_trial')}: {objective} {result.get('best_value')} with {result.get('best_params')}; "
        f"adapter {result.get('best_adapter_id')} (job {result.get('best_job_id')})"
    )
