"""Default job names that tell jobs apart: what a job works on, by name and id.

"eval adapter #1 on dataset #4" for every evaluation of that pair says nothing the next
one does not; the names here say which adapters and dataset (by name and id), which
metrics, which merge method and rank. The UI and the CLI show the job id beside the name,
so two jobs with the same request still differ in the list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from studio.errors import NotFoundError
from studio.schema import (
    AnyRequest,
    CheckRequest,
    EvalRequest,
    FederatedRequest,
    GenerateRequest,
    GeneratorRequest,
    MergeRequest,
    MixtureRequest,
    PersonaliseRequest,
    SweepRequest,
    TrainRequest,
    TransferRequest,
)

MAX_NAME = 200  # what the jobs table's name column holds


def _named(getter: Callable[[int], Any], item_id: int) -> str:
    """``'sst2-lora' (#3)``, or ``#3`` when the row is gone (its job then fails with the reason)."""
    try:
        return f"'{getter(item_id).name}' (#{item_id})"
    except NotFoundError:
        return f"#{item_id}"


def _train_name(request: TrainRequest, registry: Any) -> str:
    name = f"{request.variant} on {_named(registry.get_dataset, request.dataset_id)}"
    return f"{name} → '{request.name}'" if request.name else name


def _eval_name(request: EvalRequest, registry: Any) -> str:
    models = ([f"base '{request.base_model}'"] if request.base_model else []) + [
        f"adapter {_named(registry.get_adapter, i)}" for i in request.adapters()
    ]
    on = _named(registry.get_dataset, request.dataset_id)
    return f"eval {' vs '.join(models)} on {on}: {', '.join(dict.fromkeys(request.metrics))}"


def _merge_name(request: MergeRequest, registry: Any) -> str:
    parents = ", ".join(f"#{i}" for i in request.adapter_ids)
    name = f"merge {request.method} of {parents}"
    if request.weights is not None:
        name += f" × {', '.join(f'{w:g}' for w in request.weights)}"
    if request.rank:
        name += f" at rank {request.rank}"
    return f"{name} → '{request.name}'" if request.name else name


def _personalise_name(request: PersonaliseRequest, registry: Any) -> str:
    name = (
        f"RecLoRA K={request.n_meta} r={request.rank} on {_named(registry.get_dataset, request.dataset_id)} "
        f"by {request.user_column!r}"
    )
    return f"{name} → '{request.name}'" if request.name else name


def _mixture_name(request: MixtureRequest, registry: Any) -> str:
    experts = ", ".join(
        f"#{a} for {_named(registry.get_dataset, d)}"
        for a, d in zip(request.adapter_ids, request.dataset_ids, strict=True)
    )
    name = f"mixture of {experts}, top-{request.settings.top_k}"
    return f"{name} → '{request.name}'" if request.name else name


def _generator_name(request: GeneratorRequest, registry: Any) -> str:
    tasks = ", ".join(_named(registry.get_adapter, i) for i in request.adapter_ids)
    name = f"ICM-LoRA generator ({request.preset}) over {tasks}"
    return f"{name} → '{request.name}'" if request.name else name


def _generate_name(request: GenerateRequest, registry: Any) -> str:
    name = (
        f"generate with {_named(registry.get_adapter, request.generator_id)} "
        f"for {_named(registry.get_dataset, request.dataset_id)}"
    )
    return f"{name} → '{request.name}'" if request.name else name


def _transfer_name(request: TransferRequest, registry: Any) -> str:
    name = f"transfer adapter {_named(registry.get_adapter, request.adapter_id)} to {request.target_base}"
    return f"{name} → '{request.name}'" if request.name else name


def _check_name(request: CheckRequest, registry: Any) -> str:
    return f"system check, {request.steps} steps"


def _sweep_name(request: SweepRequest, registry: Any) -> str:
    searched = ", ".join(request.space)
    name = f"sweep {request.variant} on {_named(registry.get_dataset, request.dataset_id)}: {searched}"
    return f"{name} → '{request.name}'" if request.name else name


def _federated_name(request: FederatedRequest, registry: Any) -> str:
    """``FFA-LoRA, 3 clients (dirichlet split) × 2 rounds on 'colours' (#4) with DP-SGD``."""
    from studio.federated.job import STRATEGY_TITLES  # the titles the adapter's name and README use

    name = (
        f"{STRATEGY_TITLES.get(request.strategy, request.strategy)}, "
        f"{request.clients} client{'s' if request.clients != 1 else ''} ({request.split} split) × "
        f"{request.rounds} round{'s' if request.rounds != 1 else ''} on {_named(registry.get_dataset, request.dataset_id)}"
    )
    if request.privacy is not None:
        name += " with DP-SGD"
    return f"{name} → '{request.name}'" if request.name else name


NAMERS: dict[type, Callable[[Any, Any], str]] = {
    TrainRequest: _train_name,
    EvalRequest: _eval_name,
    MergeRequest: _merge_name,
    MixtureRequest: _mixture_name,
    CheckRequest: _check_name,
    PersonaliseRequest: _personalise_name,
    GeneratorRequest: _generator_name,
    GenerateRequest: _generate_name,
    TransferRequest: _transfer_name,
    SweepRequest: _sweep_name,
    FederatedRequest: _federated_name,
}


def default_job_name(request: AnyRequest, registry: Any) -> str:
    """The name a job gets when its submitter gives none (see the module docstring)."""
    namer = NAMERS.get(type(request))
    name = namer(request, registry) if namer else request.kind
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"
