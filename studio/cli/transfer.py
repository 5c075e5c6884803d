"""`studio transfer`: carry an adapter to another base model with Trans-LoRA (a transfer job)."""

from __future__ import annotations

import click
from pydantic import ValidationError

from studio.cli.common import inline_option, services, submit_and_wait
from studio.errors import StudioError
from studio.schema import TransferOptions, TransferRequest, format_validation_error


def build_request(adapter_id: int, to: str, keep: int | None, threshold: float | None, name: str | None):
    """The TransferRequest of the command's options (unset options keep the schema's defaults)."""
    options = {k: v for k, v in {"samples": keep, "threshold": threshold}.items() if v is not None}
    try:
        return TransferRequest(adapter_id=adapter_id, target_base=to, options=TransferOptions(**options), name=name)
    except ValidationError as exc:
        raise StudioError(format_validation_error(exc)) from None


@click.command("transfer")
@click.argument("adapter_id", type=int)
@click.option("--to", "to", required=True, help="The new base: bundled model name, local model directory or hub id.")
@click.option("--keep", type=int, default=None, help="Synthetic inputs to keep and train on (default 64).")
@click.option(
    "--threshold", type=float, default=None, help="Keep an input when the discriminator's P(real) is above this."
)
@click.option("--name", default=None, help="Name of the transferred adapter.")
@click.option("--wait/--no-wait", default=False, help="Wait for the job and print the new adapter.")
@inline_option
def transfer_cmd(adapter_id, to, keep, threshold, name, wait, inline) -> None:
    """Transfer ADAPTER_ID (trained with a transfer kit) to the base model --to, without its training data."""
    request = build_request(adapter_id, to, keep, threshold, name)
    svc = services()
    if inline:
        from studio.jobs.inline import check_inline_allowed

        check_inline_allowed(svc.settings)
    job = submit_and_wait(svc, request, "transfer", f"adapter {adapter_id} to {to}", wait, inline)
    if job is None:
        return
    result = job.result or {}
    click.echo(
        f"adapter {result['adapter_id']} on {to}: {result['generated']} inputs written, {result['kept']} kept, "
        f"{result['trained']} trained on"
    )
