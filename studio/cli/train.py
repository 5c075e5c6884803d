"""`studio train`: submit a training job through the queue (optionally wait with a progress bar)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from pydantic import ValidationError

from studio.cli.common import inline_option, services, submit_and_wait
from studio.errors import StudioError
from studio.schema import TrainingHyperParams, TrainRequest, format_validation_error


def parse_assignments(pairs: tuple[str, ...], variant_fields: set[str]) -> tuple[dict, dict]:
    """Split ``key=value`` pairs into (hyper-parameters, variant parameters).

    Keys may be prefixed ``hyper.`` or ``variant.``; unprefixed keys go where the
    name is known (training settings first). Values are read as JSON when they
    parse (numbers, booleans, lists), else kept as text.
    """
    hyper, variant = {}, {}
    hyper_fields = set(TrainingHyperParams.model_fields)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise StudioError(f"--set {pair!r}: expected key=value, e.g. --set learning_rate=1e-4")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        scope, _, name = key.rpartition(".")
        if scope == "hyper" or (not scope and name in hyper_fields):
            hyper[name] = value
        elif scope == "variant" or (not scope and name in variant_fields):
            variant[name] = value
        else:
            known = ", ".join(sorted(hyper_fields | variant_fields))
            raise StudioError(f"--set {key}: not a training or variant setting; known: {known}")
    return hyper, variant


@click.command()
@click.option("--dataset", "dataset_ref", required=True, help="A registered dataset id, or a file to import first.")
@click.option("--variant", default="lora", show_default=True, help="Variant name (see `studio variants`).")
@click.option("--base", "base_model", default=None, help="Base model (default: the bundled chat model).")
@click.option("--name", default=None, help="Name of the resulting adapter.")
@click.option(
    "--variant-preset",
    "variant_preset",
    default=None,
    help="A named set of the variant's parameters, e.g. official or small-model (see `studio variants --json`); "
    "--set values win over it.",
)
@click.option("--set", "assignments", multiple=True, help="key=value for a training or variant setting (repeatable).")
@click.option("--seed", default=42, show_default=True, type=int)
@click.option(
    "--transfer-kit/--no-transfer-kit",
    default=True,
    show_default=True,
    help="Keep a transfer kit with the adapter (text generation): it is built after the last step and takes "
    "minutes on a CPU; --no-transfer-kit for a quick run.",
)
@click.option("--wait", is_flag=True, help="Wait for the job, show a progress bar, print the adapter.")
@inline_option
def train(
    dataset_ref, variant, variant_preset, base_model, name, assignments, seed, transfer_kit, wait, inline
) -> None:
    """Fine-tune a base model on a dataset with one LoRA variant."""
    from studio.jobs.inline import check_inline_allowed
    from studio.variants.registry import get_variant, params_with_preset

    svc = services()
    if inline:
        check_inline_allowed(svc.settings)  # before anything is imported or queued
    variant_fields = set(get_variant(variant).Params.model_fields)
    hyper, variant_params = parse_assignments(assignments, variant_fields)
    variant_params = params_with_preset(variant, variant_preset, variant_params)
    dataset_id = _dataset_id(svc, dataset_ref)
    task = svc.datasets.get(dataset_id).report.get("task", "causal-lm")
    try:
        request = _build_request(svc, dataset_id, base_model, name, task, variant, variant_params, hyper, seed)
        request = request.model_copy(update={"transfer_kit": transfer_kit})
    except ValidationError as exc:
        raise StudioError(format_validation_error(exc)) from None
    _print_memory_estimate(svc, request, dataset_id, task)
    _print_time_estimate(svc, request, dataset_id, task)
    job = submit_and_wait(
        svc, request, "training", f"{variant} on {request.base_model}, dataset {dataset_id}", wait, inline
    )
    if job is None:
        return
    click.echo(f"adapter {job.result.get('adapter_id')} at {job.result.get('adapter_path')}")


def _print_memory_estimate(svc, request, dataset_id, task) -> None:
    """Print the memory estimate; refuse a job that cannot fit when the worker runs on this machine."""
    from studio.device import detect_device
    from studio.training.memory import estimate_for_request, gib

    settings = svc.settings
    device = detect_device(settings.device)
    try:
        plan = estimate_for_request(request, settings, device, svc.datasets.get(dataset_id).stored_path, task)
    except StudioError as exc:
        click.echo(f"memory estimate unavailable: {exc}")
        return
    click.echo(f"{plan.describe()} on {device.label}")
    if not plan.fits:
        message = (
            f"this job needs about {gib(plan.estimate.total)} even one example at a time, more than "
            f"the {gib(plan.budget)} memory budget; lower max_length or raise STUDIO_MEMORY_BUDGET_GB"
        )
        if settings.start_embedded_worker:
            raise StudioError(message)
        click.echo(f"warning: {message} (on this machine; the worker decides on its own)")


def _print_time_estimate(svc, request, dataset_id, task) -> None:
    """Print how long the run will take, measured on this machine now (the worker may run elsewhere)."""
    from studio.device import detect_device
    from studio.training.duration import estimate_for_request

    device = detect_device(svc.settings.device)
    data_path = svc.datasets.get(dataset_id).stored_path
    try:
        # Timing a step loads the base model: a minute or more on a busy CPU, so say what runs.
        estimate = estimate_for_request(request, svc.settings, device, data_path, task, log=_say_measuring)
    except (StudioError, OSError, ValueError) as exc:
        click.echo(f"time estimate unavailable: {exc}")
        return
    click.echo(f"time estimate: {estimate.describe()} on {device.label}; {estimate.breakdown()}")


def _say_measuring(message: str) -> None:
    """Print the time estimate's progress ("timing a training step ... on this machine") before a long pause."""
    click.echo(f"time estimate: {message} (loads the base model)...")


def _build_request(svc, dataset_id, base_model, name, task, variant, variant_params, hyper, seed) -> TrainRequest:
    return TrainRequest(
        name=name,
        dataset_id=dataset_id,
        base_model=base_model or svc.settings.default_base_model,
        task=task,
        variant=variant,
        variant_params=variant_params,
        hyper=TrainingHyperParams(**hyper),
        seed=seed,
    )


def _dataset_id(svc, ref: str) -> int:
    if ref.isdigit():
        return svc.datasets.get(int(ref)).id
    path = Path(ref)
    if not path.exists():
        raise StudioError(f"--dataset {ref!r} is neither a dataset id nor an existing file")
    row = svc.datasets.add(path)
    click.echo(f"imported {path.name} as dataset {row.id} ({row.format}, {row.rows} rows)")
    return row.id
