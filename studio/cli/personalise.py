"""`studio personalise`: submit a RecLoRA (personalised adapters) job; `--wait`/`--inline` as for `studio train`."""

from __future__ import annotations

import click
from pydantic import ValidationError

from studio.cli.common import inline_option, services, submit_and_wait
from studio.errors import StudioError
from studio.schema import PersonaliseRequest, format_validation_error


@click.command("personalise")
@click.option("--dataset", "dataset_ref", required=True, help="A registered dataset id, or a file to import first.")
@click.option("--user-column", required=True, help="The column naming each row's user (customer, persona, author).")
@click.option("--user-features", "user_features_path", default=None, help="Optional JSONL/JSON/CSV of user features.")
@click.option("--base", "base_model", default=None, help="Base model (default: the bundled chat model).")
@click.option("--name", default=None, help="Name of the resulting personalised adapter.")
@click.option("--k", "n_meta", default=4, show_default=True, type=int, help="Meta-LoRAs per module (K).")
@click.option("--r", "rank", default=8, show_default=True, type=int, help="Rank of each meta-LoRA.")
@click.option("--lora-alpha", default=16.0, show_default=True, type=float)
@click.option("--steps", default=100, show_default=True, type=int)
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--lr", "learning_rate", default=1e-3, show_default=True, type=float)
@click.option("--max-length", default=512, show_default=True, type=int)
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--wait", is_flag=True, help="Wait for the job, show a progress bar, print the adapter.")
@inline_option
def personalise(dataset_ref, user_column, base_model, wait, inline, **fields) -> None:
    """Train K shared meta-LoRAs and a per-user gate on a dataset with a user column (RecLoRA)."""
    from studio.cli.train import _dataset_id
    from studio.jobs.inline import check_inline_allowed

    svc = services()
    if inline:
        check_inline_allowed(svc.settings)
    dataset_id = _dataset_id(svc, dataset_ref)
    try:
        request = PersonaliseRequest(
            dataset_id=dataset_id,
            user_column=user_column,
            base_model=base_model or svc.settings.default_base_model,
            **fields,
        )
    except ValidationError as exc:
        raise StudioError(format_validation_error(exc)) from None
    job = submit_and_wait(
        svc, request, "personalise", f"K={request.n_meta}, r={request.rank}, dataset {dataset_id}", wait, inline
    )
    if job is None:
        return
    result = job.result or {}
    click.echo(
        f"personalised adapter {result.get('adapter_id')} ({result.get('users')} users) at {result.get('adapter_path')}"
    )
