"""`studio mix`: a MeteoRA mixture of LoRA adapters with learned per-token routers (a mixture job)."""

from __future__ import annotations

import click
from pydantic import ValidationError

from studio.cli.common import inline_option, services, submit_and_wait
from studio.errors import StudioError
from studio.schema import MixtureRequest, format_validation_error


@click.command("mix")
@click.argument("adapter_ids", type=int, nargs=-1, required=True)
@click.option(
    "--dataset",
    "dataset_ids",
    multiple=True,
    type=int,
    required=True,
    help="The labelled dataset of each expert, in the order of ADAPTER_IDS (repeatable, one per adapter).",
)
@click.option("--top-k", default=2, show_default=True, type=int, help="Experts each token uses in every layer.")
@click.option(
    "--temperature", default=1.0, show_default=True, type=float, help="Softmax temperature over the chosen experts."
)
@click.option("--steps", default=None, type=int, help="Router training steps (default: one pass over the rows).")
@click.option("--lr", "learning_rate", default=5e-4, show_default=True, type=float, help="Peak learning rate.")
@click.option("--gate-loss-weight", default=50.0, show_default=True, type=float, help="Weight of the routing loss.")
@click.option("--train-experts", is_flag=True, help="Also fine-tune the experts' LoRA weights.")
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--name", default=None, help="Name of the mixture adapter.")
@click.option("--wait/--no-wait", default=False, help="Wait for the job and print the new adapter.")
@inline_option
def mix_cmd(
    adapter_ids,
    dataset_ids,
    top_k,
    temperature,
    steps,
    learning_rate,
    gate_loss_weight,
    train_experts,
    seed,
    name,
    wait,
    inline,
) -> None:
    """Mix ADAPTER_IDS (plain LoRA, one base model) into a MeteoRA mixture trained on one --dataset per adapter."""
    try:
        request = MixtureRequest(
            adapter_ids=list(adapter_ids),
            dataset_ids=list(dataset_ids),
            steps=steps,
            seed=seed,
            name=name,
            settings={
                "top_k": top_k,
                "temperature": temperature,
                "learning_rate": learning_rate,
                "gate_loss_weight": gate_loss_weight,
                "train_experts": train_experts,
            },
        )
    except ValidationError as exc:
        raise StudioError(format_validation_error(exc)) from None
    svc = services()
    if inline:
        from studio.jobs.inline import check_inline_allowed

        check_inline_allowed(svc.settings)
    pairs = ", ".join(f"#{a} on dataset {d}" for a, d in zip(adapter_ids, dataset_ids, strict=True))
    job = submit_and_wait(svc, request, "mixture", f"{pairs}; top-{top_k}", wait, inline)
    if job is None:
        return
    result = job.result or {}
    line = f"mixture adapter {result['adapter_id']}: {len(result['parents'])} experts, {result['steps']} steps"
    if "gate_accuracy" in result:
        per_task = ", ".join(
            f"{task} {result[f'gate_accuracy_task{j}']:.1%}" for j, task in enumerate(result.get("tasks", []))
        )
        line += f"; held-out gate accuracy {result['gate_accuracy']:.1%} ({per_task})"
    click.echo(line)
