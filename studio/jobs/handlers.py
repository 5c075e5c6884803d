"""Which plain function runs which kind of job.

Handlers are named by import path and imported on first use, so a worker does
no heavy work at import time and a kind whose module is missing fails clearly.
Adding a job kind is one line here plus its request model in studio.schema.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from studio.errors import StudioError

HANDLERS: dict[str, str] = {
    "check": "studio.jobs.check:run_check",
    "train": "studio.training.job:run_train_job",
    "eval": "studio.evaluation.job:run_eval_job",
    "merge": "studio.merging.job:run_merge_job",
    "personalise": "studio.composition.reclora_job:run_personalise_job",
    "pretrain": "studio.sequences.pretrain:run_pretrain_job",
    "mixture": "studio.composition.mixture_job:run_mixture_job",
    "generator": "studio.adapter_generation.jobs:run_generator_job",
    "generate": "studio.adapter_generation.jobs:run_generate_job",
    "transfer": "studio.transfer.job:run_transfer_job",
    "sweep": "studio.sweeps.job:run_sweep_job",
    "federated": "studio.federated.job:run_federated_job",
}

Handler = Callable[..., dict[str, Any]]


def get_handler(kind: str) -> Handler:
    """The function ``handler(request, reporter, ctx) -> result dict`` for ``kind``."""
    target = HANDLERS.get(kind)
    if target is None:
        raise StudioError(f"this studio cannot run jobs of kind {kind!r}; known kinds: {', '.join(HANDLERS)}")
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise StudioError(f"jobs of kind {kind!r} are not available in this installation ({exc})") from None
    return getattr(module, func_name)
