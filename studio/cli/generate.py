"""`studio generate`: ICM-LoRA adapters without training; `studio generate train-generator` trains the generator.

``studio generate --generator ID --dataset ID`` queues a generate job (an adapter for the
dataset's task); ``studio generate train-generator ID ID ...`` queues a generator job over
the adapters of several tasks. Both take ``--wait`` / ``--inline`` as ``studio train`` does.
"""

from __future__ import annotations

import click
from pydantic import ValidationError

from studio.cli.common import echo_queue_notice, inline_option, services, wait_until_succeeded
from studio.errors import StudioError
from studio.schema import GENERATOR_PRESETS, GenerateRequest, GeneratorRequest, format_validation_error


def _submit(request, wait: bool, inline: bool, what: str):
    """Queue ``request``; with --wait/--inline, return the finished job (else None)."""
    svc = services()
    if inline:
        from studio.jobs.inline import check_inline_allowed

        check_inline_allowed(svc.settings)
    job = svc.jobs.submit(request)
    click.echo(f"queued {what} job {job.id}")
    echo_queue_notice(job)
    if not (wait or inline):
        return None
    return wait_until_succeeded(svc, job.id, inline=inline)


@click.group("generate", invoke_without_command=True)
@click.option("--generator", "generator_id", type=int, default=None, help="A trained generator's id.")
@click.option("--dataset", "dataset_id", type=int, default=None, help="A dataset of ~30 examples of the new task.")
@click.option("--examples", default=30, show_default=True, type=int, help="Rows the task vector is computed from.")
@click.option("--seed", default=2024, show_default=True, type=int, help="Seed of the generator's sample.")
@click.option("--name", default=None, help="Name of the generated adapter.")
@click.option("--wait", is_flag=True, help="Wait for the job and print the new adapter.")
@inline_option
@click.pass_context
def generate(ctx, generator_id, dataset_id, examples, seed, name, wait, inline) -> None:
    """Generate an adapter for a new task from ~30 examples with a trained ICM-LoRA generator."""
    if ctx.invoked_subcommand is not None:
        return
    if generator_id is None or dataset_id is None:
        raise click.UsageError("give --generator ID and --dataset ID (or use `studio generate train-generator`)")
    try:
        request = GenerateRequest(
            generator_id=generator_id, dataset_id=dataset_id, examples=examples, seed=seed, name=name
        )
    except ValidationError as exc:
        raise StudioError(format_validation_error(exc)) from None
    job = _submit(request, wait, inline, "generate")
    if job is not None:
        result = job.result or {}
        click.echo(f"adapter {result.get('adapter_id')} at {result.get('adapter_path')}")


@generate.command("train-generator")
@click.argument("adapter_ids", type=int, nargs=-1, required=True)
@click.option("--preset", type=click.Choice(GENERATOR_PRESETS), default="small", show_default=True)
@click.option("--epochs", default=200, show_default=True, type=int)
@click.option("--lr", "learning_rate", default=2e-4, show_default=True, type=float)
@click.option("--examples", default=30, show_default=True, type=int, help="Rows per task for its task vector.")
@click.option("--seed", default=2024, show_default=True, type=int)
@click.option("--name", default=None, help="Name of the generator.")
@click.option("--wait", is_flag=True, help="Wait for the job and print the generator.")
@inline_option
def train_generator_cmd(adapter_ids, wait, inline, **fields) -> None:
    """Train a generator on ADAPTER_IDS (one per task, one base model, one LoRA shape)."""
    try:
        request = GeneratorRequest(adapter_ids=list(adapter_ids), **fields)
    except ValidationError as exc:
        raise StudioError(format_validation_error(exc)) from None
    job = _submit(request, wait, inline, "generator")
    if job is not None:
        result = job.result or {}
        click.echo(
            f"generator {result.get('generator_id')} at {result.get('generator_path')}: "
            f"{result.get('checkpoints')} checkpoints learnt, {result.get('size_vs_checkpoints', 0):.1%} of their size"
        )
