"""`studio pretrain`: queue a pre-train job (a sequence encoder from scratch), optionally wait for it."""

from __future__ import annotations

import click
from pydantic import ValidationError

from studio.cli.common import inline_option, services, submit_and_wait
from studio.errors import StudioError
from studio.schema import ENCODER_ARCHITECTURES, PretrainRequest, format_validation_error


@click.command()
@click.option("--dataset", "dataset_ref", required=True, help="A registered dataset id, or a file to import first.")
@click.option("--name", default=None, help="Name of the new base model (default seq-encoder-<dataset>-<job>).")
@click.option("--column", "sequence_column", default=None, help="Sequence column (default: the detected one).")
@click.option("--tokenizer", type=click.Choice(["auto", "nucleotide", "kmer", "codon", "protein"]), default="auto")
@click.option("--k", type=int, default=None, help="k of a k-mer tokenizer (3 to 6).")
@click.option("--size", type=click.Choice(["auto", "tiny", "small", "base"]), default="auto", show_default=True)
@click.option(
    "--architecture",
    type=click.Choice(ENCODER_ARCHITECTURES),
    default="bert",
    show_default=True,
    help="bert: learnt absolute positions; roformer: rotary (relative) positions.",
)
@click.option("--extra-dataset", "extra_dataset_id", type=int, default=None, help="Unlabelled sequences to add.")
@click.option("--set", "assignments", multiple=True, help="key=value for any other PretrainRequest field.")
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--wait", is_flag=True, help="Wait for the job with a progress bar, print the base model.")
@inline_option
def pretrain(
    dataset_ref,
    name,
    sequence_column,
    tokenizer,
    k,
    size,
    architecture,
    extra_dataset_id,
    assignments,
    seed,
    wait,
    inline,
):
    """Pre-train a BERT-style encoder (BERT or RoFormer) on a dataset's DNA/RNA/protein sequences (masked-LM)."""
    from studio.cli.train import _dataset_id
    from studio.jobs.inline import check_inline_allowed

    svc = services()
    if inline:
        check_inline_allowed(svc.settings)
    fields = _assignments(assignments)
    dataset_id = _dataset_id(svc, dataset_ref)
    try:
        request = PretrainRequest(
            dataset_id=dataset_id,
            name=name,
            sequence_column=sequence_column,
            tokenizer=tokenizer,
            k=k,
            size=size,
            architecture=architecture,
            extra_dataset_id=extra_dataset_id,
            seed=seed,
            **fields,
        )
    except ValidationError as exc:
        raise StudioError(format_validation_error(exc)) from None
    _print_plan(svc, request)
    job = submit_and_wait(svc, request, "pre-train", f"dataset {dataset_id}", wait, inline)
    if job is None:
        return
    result = job.result or {}
    click.echo(
        f"base model {result.get('base_model')} at {result.get('base_model_path')}: masked-LM validation loss "
        f"{result.get('first_eval_loss')} -> {result.get('eval_loss')}"
    )


def _assignments(pairs: tuple[str, ...]) -> dict:
    import json

    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in PretrainRequest.model_fields:
            known = ", ".join(sorted(f for f in PretrainRequest.model_fields if f != "kind"))
            raise StudioError(f"--set {pair!r}: expected key=value with key one of {known}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _print_plan(svc, request: PretrainRequest) -> None:
    """The column, tokenizer, encoder size and time estimate, measured on this machine before queueing."""
    import torch

    from studio.device import detect_device
    from studio.sequences.pretrain import describe_plan, estimate_time, plan_pretraining

    device = detect_device(svc.settings.device)
    plan = plan_pretraining(request, svc.registry, device.type, click.echo)  # refusals (no sequences) come here
    click.echo(describe_plan(plan))
    try:
        estimate = estimate_time(
            request, plan.data, plan.model, plan.tokenizer, plan.k, torch.device(device.torch_device)
        )
    except (RuntimeError, ValueError) as exc:
        click.echo(f"time estimate unavailable: {exc}")
        return
    click.echo(f"time estimate: {estimate.describe()} on {device.label}; {estimate.breakdown()}")
