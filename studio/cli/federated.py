"""`studio federated`: simulated federated LoRA jobs (``run``) and the client-mix preview (``split-preview``).

A click group: the across-sites commands (``serve``, ``join``) are added to the same group by
:mod:`studio.cli.federated_sites` when that module is installed.
"""

from __future__ import annotations

from typing import Any

import click
from pydantic import ValidationError

from studio.cli.common import echo_queue_notice, inline_option, services, wait_until_succeeded
from studio.errors import StudioError
from studio.schema import FEDERATED_STRATEGIES, FederatedRequest, format_validation_error


@click.group("federated")
def federated() -> None:
    """Federated LoRA on Flower: K clients train on their own rows, a server aggregates."""


def _parse_shares(ctx, param, value: str | None) -> list[list[float]] | None:
    """'0.1,0.9;0.9,0.1' -> [[0.1, 0.9], [0.9, 0.1]] (None: the request's default)."""
    if value is None:
        return None
    try:
        return [[float(v) for v in client.split(",")] for client in value.split(";") if client.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: numbers separated by ',' within a client and ';' between clients"
        ) from None


def split_options(fn):
    """The options that fix the dataset and its split (shared by run and split-preview)."""
    options = [
        click.option("--dataset", "dataset_ref", required=True, help="A registered dataset id, or a file to import."),
        click.option("--clients", default=4, show_default=True, type=int, help="Number of simulated clients K."),
        click.option(
            "--split",
            type=click.Choice(["iid", "dirichlet", "label_shares", "column"]),
            default="iid",
            show_default=True,
        ),
        click.option("--alpha", default=0.5, show_default=True, type=float, help="Dirichlet α (small = skewed)."),
        click.option(
            "--label-shares",
            default=None,
            callback=_parse_shares,
            help="label_shares split: each client's label mix, clients separated by ';' "
            "(default FFA-LoRA's 3 clients: '0.1,0.9;0.9,0.1;0.5,0.5').",
        ),
        click.option("--label", "label_column", default="label", show_default=True, help="Label column."),
        click.option("--client-column", default="client", show_default=True, help="Column naming each row's client."),
        click.option("--validation-fraction", default=0.2, show_default=True, type=float),
        click.option("--seed", default=0, show_default=True, type=int),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_request(svc, dataset_ref: str, base_model: str | None, privacy: dict[str, Any] | None, **fields):
    """The FederatedRequest of the command line; validation errors become one plain line."""
    from studio.cli.train import _dataset_id

    if fields.get("label_shares", "") is None:
        fields.pop("label_shares")  # not given: the request's default (FFA-LoRA's 3-client split)
    try:
        return FederatedRequest(
            dataset_id=_dataset_id(svc, dataset_ref),
            base_model=base_model or svc.settings.default_base_model,
            privacy=privacy,
            **fields,
        )
    except ValidationError as exc:
        raise StudioError(format_validation_error(exc)) from None


def privacy_block(epsilon: float | None, noise: float | None, clip: float, delta: float, rate: float | None):
    """--epsilon / --noise / --clip as the request's privacy block (None: no DP)."""
    if epsilon is None and noise is None:
        return None
    return {
        "target_epsilon": epsilon,
        "noise_multiplier": noise,
        "max_grad_norm": clip,
        "delta": delta,
        "sample_rate": rate,
    }


@federated.command("run")
@split_options
@click.option("--rounds", default=3, show_default=True, type=int, help="Federated rounds R.")
@click.option("--local-steps", default=5, show_default=True, type=int, help="Local steps per sampled client.")
@click.option("--fraction", default=1.0, show_default=True, type=float, help="Share of clients sampled per round.")
@click.option("--strategy", type=click.Choice(FEDERATED_STRATEGIES), default="fedit", show_default=True)
@click.option("--fair-solver", type=click.Choice(["iterative", "ridge"]), default="iterative", show_default=True)
@click.option("--fair-lambda", default=0.01, show_default=True, type=float)
@click.option("--r", "r", default=4, show_default=True, type=int, help="LoRA rank.")
@click.option("--lora-alpha", default=8.0, show_default=True, type=float)
@click.option("--target", "target_modules", multiple=True, help="Module to adapt (repeat); default: the variant's.")
@click.option("--lr", "learning_rate", default=1e-2, show_default=True, type=float)
@click.option("--batch-size", default=4, show_default=True, type=int)
@click.option("--max-length", default=128, show_default=True, type=int)
@click.option("--base", "base_model", default=None, help="Base model (default: the bundled chat model).")
@click.option("--name", default=None, help="Name of the resulting adapter.")
@click.option("--epsilon", type=float, default=None, help="DP budget ε per client (alone: σ is chosen to fit).")
@click.option("--noise", type=float, default=None, help="DP noise multiplier σ.")
@click.option("--clip", type=float, default=1.0, show_default=True, help="DP clipping norm C.")
@click.option("--delta", type=float, default=1e-5, show_default=True, help="DP δ.")
@click.option("--sample-rate", type=float, default=None, help="DP sampling rate q (default: batch size / rows).")
@click.option("--wait", is_flag=True, help="Wait for the job, show a progress bar, print the adapter.")
@inline_option
def run(dataset_ref, base_model, epsilon, noise, clip, delta, sample_rate, target_modules, wait, inline, **fields):
    """Queue a simulated federated job: the dataset split among K clients, R rounds of Flower."""
    from studio.jobs.inline import check_inline_allowed

    svc = services()
    if inline:
        check_inline_allowed(svc.settings)
    privacy = privacy_block(epsilon, noise, clip, delta, sample_rate)
    fields["target_modules"] = list(target_modules) or None
    request = build_request(svc, dataset_ref, base_model, privacy, **fields)
    job = svc.jobs.submit(request)
    dp = f", DP {'ε ≤ ' + format(epsilon, 'g') if epsilon else 'σ = ' + format(noise, 'g')}" if privacy else ""
    click.echo(
        f"queued federated job {job.id} ({request.strategy}, {request.clients} clients, {request.rounds} rounds{dp})"
    )
    echo_queue_notice(job)
    if not (wait or inline):
        return
    job = wait_until_succeeded(svc, job.id, inline=inline)
    result = job.result or {}
    eps = f", ε = {result['epsilon']:.3g}" if "epsilon" in result else ""
    click.echo(
        f"adapter {result.get('adapter_id')} at {result.get('adapter_path')}: validation loss "
        f"{result.get('initial_eval_loss', float('nan')):.4f} → {result.get('eval_loss', float('nan')):.4f}{eps}"
    )


@federated.command("split-preview")
@split_options
def split_preview(dataset_ref, **fields):
    """Print each client's rows and label mix, as the job would split the dataset."""
    from studio.federated.planning import load_rows, preview_split

    svc = services()
    request = build_request(svc, dataset_ref, None, None, **fields)
    preview = preview_split(load_rows(svc.datasets.get(request.dataset_id), request), request)
    click.echo(f"{len(preview.validation)} rows held out for validation")
    for line in preview.lines():
        click.echo(line)


try:  # the across-sites commands (serve, join) live in their own module
    from studio.cli.federated_sites import register

    register(federated)
except ImportError:
    pass
