"""The ``mixture`` job: N LoRA experts of one base + one labelled dataset each in, a registered MeteoRA mixture out.

Steps: check the experts (:func:`studio.composition.mixture_checks.check_mixable`), split
every dataset into training and held-out rows (the studio's seeded split), wrap a fresh
base with the experts (:meth:`MeteoRAModel.from_adapters`), train the routers
(:func:`~studio.composition.meteora_training.train_mixture`, progress and metrics through
the job's reporter like a training job), measure on the held-out rows how often the
routers pick each task's own expert (:func:`~studio.composition.meteora_training.routing_report`),
write the bundle (:func:`~studio.composition.meteora_bundle.save_bundle`) and register it as
an adapter of variant ``mixture`` whose parents are its experts. The routing report is kept
in the bundle (``mixture.json``) for the expert-usage chart; gate accuracies are the
adapter's metrics.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from studio.composition.mixture_checks import MIXTURE_VARIANT, check_mixable
from studio.progress import Reporter
from studio.schema import SCHEMA_VERSION, MixtureRequest

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def split_task_rows(
    registry: Any, dataset_ids: list[int], fraction: float, seed: int
) -> tuple[list[list[dict]], list[list[dict]], list[str]]:
    """(training rows per task, held-out rows per task, dataset names) of the registered datasets, in order."""
    from studio.datasets.splits import split_list
    from studio.errors import ValidationFailed
    from studio.training.data import read_jsonl

    train, held_out, names = [], [], []
    for task, dataset_id in enumerate(dataset_ids):
        row = registry.get_dataset(dataset_id)
        rows = read_jsonl(row.stored_path)
        if not rows:
            raise ValidationFailed(f"dataset #{dataset_id} ({row.name}), the task of expert {task}, has no rows")
        fit, val = split_list(rows, fraction, seed)
        train.append(fit)
        held_out.append(val)
        names.append(row.name or f"dataset {dataset_id}")
    return train, held_out, names


def run_mixture_job(request: MixtureRequest, reporter: Reporter, ctx: Any) -> dict[str, Any]:
    """Train a mixture of ``request.adapter_ids`` and register it; returns its id and gate accuracies."""
    from studio.composition.meteora import ExpertRef, MeteoRAModel
    from studio.composition.meteora_bundle import save_bundle
    from studio.composition.meteora_training import mixture_options, routing_report, train_mixture
    from studio.models.base_models import resolve_base_model
    from studio.training.job import dir_size, sha256_file
    from studio.training.memory import release_memory
    from studio.training.models import load_base_model, load_tokenizer_for

    registry = ctx.registry
    settings = request.settings
    parents = [registry.get_adapter(adapter_id) for adapter_id in request.adapter_ids]
    check_mixable(parents)
    train_rows, held_out, task_names = split_task_rows(
        registry, request.dataset_ids, request.validation_fraction, request.seed
    )
    base_model = parents[0].base_model
    base_path = resolve_base_model(base_model, ctx.settings, progress=reporter.log).path
    reporter.log(
        f"mixture of {', '.join(f'#{p.id} for {t}' for p, t in zip(parents, task_names, strict=True))} on "
        f"{base_model}: top-{settings.top_k}, temperature {settings.temperature:g}, gate loss weight "
        f"{settings.gate_loss_weight:g}" + (", experts trained too" if settings.train_experts else "")
    )
    tokenizer = load_tokenizer_for(base_path)
    model = load_base_model(base_path, "causal-lm").to(ctx.device.torch_device)
    refs = [ExpertRef(path=p.path, name=p.name, adapter_id=p.id) for p in parents]
    mixture = MeteoRAModel.from_adapters(model, refs, **mixture_options(settings))

    def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
        reporter.check_cancelled()
        reporter.progress(step, total, "training the routers" if step <= settings.log_every else None)
        reporter.metrics(step, metrics)

    trained = train_mixture(mixture, tokenizer, train_rows, settings, on_step=on_step, log=reporter.log)
    if all(held_out):
        report = routing_report(mixture, tokenizer, held_out, settings.max_length, loss_on=settings.loss_on)
    else:  # a dataset too small to split: no held-out routing score rather than a score on training rows
        reporter.log("a dataset has no held-out rows (too small to split): no held-out gate accuracy", "warning")
        report = {}
    metrics = _metrics(trained.final, report)

    out_dir = Path(ctx.settings.adapters_dir) / uuid.uuid4().hex
    try:
        extra = {
            "base_model": base_model,
            "gate_loss_weight": settings.gate_loss_weight,
            "tasks": [{"name": n, "dataset_id": d} for n, d in zip(task_names, request.dataset_ids, strict=True)],
            "routing_report": report,
            "training": {"steps": trained.steps, "examples_per_task": trained.examples_per_task, **trained.final},
        }
        save_bundle(mixture, out_dir, extra=extra)
        for name in TOKENIZER_FILES:  # the chat template the experts were trained with
            if (Path(parents[0].path) / name).is_file():
                shutil.copy2(Path(parents[0].path) / name, out_dir / name)
        record = {
            "schema_version": SCHEMA_VERSION,
            "job_id": ctx.job_id,
            "request": request.model_dump(mode="json"),
            "parents": [{"id": p.id, "name": p.name, "sha256": p.sha256} for p in parents],
        }
        (out_dir / "reproducibility.json").write_text(json.dumps(record, indent=2))
        (out_dir / "README.md").write_text(model_card(request, parents, task_names, report))
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)  # no half-written bundle is left behind
        raise

    name = request.name or "mixture of " + " + ".join(f"#{p.id}" for p in parents)
    row = registry.add_adapter(
        name=name,
        variant=MIXTURE_VARIANT,
        base_model=base_model,
        dataset_id=None,
        ranks={},  # no LoRA of its own: the experts' ranks are theirs (the parents)
        trainable_params=sum(p.numel() for p in mixture.trainable_parameters()),
        size_bytes=dir_size(out_dir),
        path=str(out_dir),
        sha256=sha256_file(out_dir / "gates.safetensors"),
        source_job_id=ctx.job_id,
        parents=[p.id for p in parents],
        metrics=metrics,
    )
    reporter.progress(trained.steps, trained.steps, "done")
    accuracy = metrics.get("gate_accuracy")
    reporter.log(
        f"mixture adapter {row.id} saved to {out_dir}"
        + (f"; held-out gate accuracy {accuracy:.1%}" if accuracy is not None else "")
    )
    del mixture, model
    release_memory()
    return {
        "adapter_id": row.id,
        "adapter_path": str(out_dir),
        "parents": [p.id for p in parents],
        "tasks": task_names,
        "steps": trained.steps,
        **metrics,
    }


def _metrics(final: dict[str, float], report: dict[str, Any]) -> dict[str, float]:
    """The adapter's metrics: held-out gate accuracy overall and per task, and the last training step's losses."""
    metrics = {
        f"train_{k}": float(v) for k, v in final.items() if k in ("loss", "lm_loss", "gate_loss", "gate_accuracy")
    }
    if report:
        metrics["gate_accuracy"] = float(report["accuracy"])
        for task, value in enumerate(report["per_task"]):
            metrics[f"gate_accuracy_task{task}"] = float(value)
    return metrics


def model_card(request: MixtureRequest, parents: list, task_names: list[str], report: dict[str, Any]) -> str:
    """A short README for the bundle: its experts and tasks, the routing settings and how well it routes."""
    s = request.settings
    lines = [
        f"# {request.name or 'MeteoRA mixture'}",
        "",
        f"A MeteoRA mixture made by Adapter Studio for `{parents[0].base_model}`: every adapted linear layer routes "
        f"each token to the top-{s.top_k} of {len(parents)} LoRA experts (temperature {s.temperature:g}).",
        "",
        *[
            f"- expert {j}: #{p.id} {p.name}, task {t}"
            + (f" (held-out gate accuracy {report['per_task'][j]:.1%})" if report else "")
            for j, (p, t) in enumerate(zip(parents, task_names, strict=True))
        ],
        "",
        "Not one LoRA: the bundle holds the routers (`gates.safetensors`) and references to the experts "
        "(`mixture.json`); load it with `studio.composition.meteora_bundle.load_bundle`.",
    ]
    return "\n".join(lines)
