"""`studio merge`: combine adapters of one base model into a new adapter (a merge job)."""

from __future__ import annotations

import click
from pydantic import ValidationError

from studio.cli.common import inline_option, services, submit_and_wait
from studio.errors import StudioError
from studio.merging.error_meaning import merge_error_sentence
from studio.merging.registry import METHOD_NAMES
from studio.schema import MergeRequest, format_validation_error


@click.command("merge")
@click.argument("adapter_ids", type=int, nargs=-1, required=True)
@click.option("--method", type=click.Choice(METHOD_NAMES), default="linear", show_default=True)
@click.option(
    "--weight",
    "weights",
    multiple=True,
    type=float,
    help="One per adapter, in order (repeatable). Default: an average for the sums, 1 each for ties and lego.",
)
@click.option("--density", default=0.2, show_default=True, type=float, help="ties/dare: share of changes kept.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of DARE's drops and lego's k-means.")
@click.option(
    "--rank",
    "-k",
    "rank",
    default=None,
    type=int,
    help="Rank of the merged adapter (default: sum of the ranks); lego: the number of clusters k (default: mean rank).",
)
@click.option(
    "--param-reweight/--no-param-reweight",
    default=True,
    show_default=True,
    help="lego: scale each cluster centre to its members' mean norm.",
)
@click.option(
    "--output-reweight",
    default="sqrt_r_over_k",
    show_default=True,
    help="lego: factor on the merged change: sqrt_r_over_k (√(mean rank / k)), none (1) or a number.",
)
@click.option("--name", default=None, help="Name of the merged adapter.")
@click.option("--wait/--no-wait", default=False, help="Wait for the job and print the new adapter.")
@inline_option
def merge_cmd(
    adapter_ids, method, weights, density, seed, rank, param_reweight, output_reweight, name, wait, inline
) -> None:
    """Merge ADAPTER_IDS (same base model) into one plain LoRA adapter: linear, TIES, DARE or LoRA-LEGO."""
    try:
        request = MergeRequest(
            adapter_ids=list(adapter_ids),
            method=method,
            weights=list(weights) or None,
            density=density,
            seed=seed,
            rank=rank,
            param_reweight=param_reweight,
            output_reweight=output_reweight,
            name=name,
        )
    except ValidationError as exc:
        raise StudioError(format_validation_error(exc)) from None
    svc = services()
    if inline:
        from studio.jobs.inline import check_inline_allowed

        check_inline_allowed(svc.settings)
    listed = ", ".join(f"{i} × {w:g}" for i, w in zip(adapter_ids, request.resolved_weights(), strict=True))
    job = submit_and_wait(svc, request, "merge", f"{method}: {listed}", wait, inline)
    if job is None:
        return
    result = job.result or {}
    click.echo(
        f"adapter {result['adapter_id']}: {result['modules']} modules, ranks {result['rank_min']}-"
        f"{result['rank_max']}, largest relative error {result['merge_max_error']:.2e}"
    )
    click.echo(merge_error_sentence(result["merge_max_error"], rank))
