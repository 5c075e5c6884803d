"""The "train" job: dataset + base model in, a registered PEFT adapter out.

The adapter directory ``<adapters_dir>/<uuid>/`` holds a standard PEFT checkpoint
(``adapter_config.json`` + ``adapter_model.safetensors``, loadable with plain
``PeftModel.from_pretrained`` on the original base), ``labels.json`` for
classifiers, a model card ``README.md`` and ``reproducibility.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

from studio.jobs.context import JobContext
from studio.progress import Reporter
from studio.schema import SCHEMA_VERSION, TrainRequest
from studio.training.kept_adapters import move_into_adapter
from studio.training.loop import TrainingResult, run_training
from studio.training.memory import release_memory
from studio.training.setup import TrainingData

ADAPTER_FILE = "adapter_model.safetensors"


def run_train_job(request: TrainRequest, reporter: Reporter, ctx: JobContext) -> dict[str, Any]:
    """Train, save and register an adapter; resumes from the job's own or another job's checkpoint."""
    from studio.models.base_models import resolve_base_model

    registry: Any = ctx.registry
    dataset_row = registry.get_dataset(request.dataset_id)
    data = TrainingData.from_row(dataset_row)
    resolved = resolve_base_model(request.base_model, ctx.settings, progress=reporter.log)
    resume = ctx.previous_checkpoint
    if resume is None and request.resume_from_job is not None:
        resume = registry.get_job(request.resume_from_job).checkpoint_path
        if resume is None:
            reporter.log(f"job {request.resume_from_job} left no checkpoint; starting from scratch", "warning")
    if resume is not None and hasattr(registry, "delete_metrics_after"):
        from studio.training.checkpoint import read_checkpoint

        # Steps after the checkpoint are trained (and reported) again.
        registry.delete_metrics_after(ctx.job_id, read_checkpoint(resume).step)
    if request.hyper.processes > 1 or request.hyper.nodes > 1:
        from dataclasses import replace

        from studio.training.distributed import RankJob, rank_threads, train_across_processes
        from studio.training.distributed import free_port as _free_port

        job = RankJob(
            request=request,
            ctx=replace(ctx, registry=None),  # the ranks report through the parent, which holds the registry
            data=data,
            base_path=resolved.path,
            resume=resume,
            dataset_rows=dataset_row.rows or 0,
            port=_free_port(),
            threads=rank_threads(ctx.settings, request.hyper.processes),
            timeout_s=float(getattr(ctx.settings, "distributed_timeout_seconds", 1800.0)),
            nodes=request.hyper.nodes,
        )
        summary = train_across_processes(job, reporter)
    else:
        result = run_training(
            request,
            reporter,
            settings=ctx.settings,
            device=ctx.device,
            work_dir=ctx.work_dir,
            resume_checkpoint=resume,
            dataset=data,
            base_path=resolved.path,
        )
        summary = finish_training(result, request, reporter, ctx, data, resolved.path, dataset_row.rows)
        del result  # the trained model: the kit loads the base again, and the worker should idle small
    release_memory()
    saved, metrics = summary.pop("saved"), summary.pop("metrics")
    trainable_params, task = summary["trainable_params"], summary.pop("task")
    out_dir = Path(summary["adapter_path"])
    kit = _transfer_kit(request, task, data, out_dir, resolved.path, reporter, ctx, summary["steps"])
    if kit is not None:
        summary["transfer_kit"] = kit
        saved["size_bytes"] += dir_size(out_dir / "transfer_kit")  # not the adapters kept along training
    name = request.name or f"{request.variant} on {data.name or f'dataset {request.dataset_id}'} (job {ctx.job_id})"
    row = registry.add_adapter(
        name=name,
        variant=request.variant,
        base_model=request.base_model,
        dataset_id=request.dataset_id,
        ranks=saved["ranks"],
        trainable_params=trainable_params,
        size_bytes=saved["size_bytes"],
        path=str(out_dir),
        sha256=saved["sha256"],
        source_job_id=ctx.job_id,
        metrics=metrics,
    )
    kept = summary["kept_checkpoints"]
    reporter.log(
        f"adapter {row.id} saved to {out_dir}" + (f", with {kept} adapters kept along training" if kept else "")
    )
    return {"adapter_id": row.id, **summary}


def finish_training(
    result: TrainingResult, request: TrainRequest, reporter: Reporter, ctx: JobContext, data, base_path, rows
) -> dict[str, Any]:
    """Save the trained adapter (and the adapters kept along training) and time the run.

    Returns the job summary plus ``saved``, ``metrics`` and ``task`` for the registration
    (plain data: in a job over several processes rank 0 runs this and sends it to the parent).
    """
    saving = time.monotonic()
    out_dir = Path(ctx.settings.adapters_dir) / uuid.uuid4().hex
    saved = save_trained_adapter(result, request, out_dir, dataset_sha256=data.sha256, job_id=ctx.job_id)
    # After the size and hash above: those describe the adapter itself, not the adapters kept along training.
    kept = move_into_adapter(ctx.work_dir, out_dir, result.total_steps, request.hyper.keep_checkpoints)
    timings = _record_timings(ctx, result, base_path, rows, time.monotonic() - saving, reporter)
    summary = {
        "adapter_path": str(out_dir),
        "final_loss": result.final_loss,
        "eval_loss": result.eval_loss,
        "eval_accuracy": result.eval_accuracy,
        "steps": result.total_steps,
        "trainable_params": result.trainable_params,
        "kept_checkpoints": len(kept),
        "precision": result.precision.name if result.precision else None,
        "training_setup": result.training_setup(request.hyper),
        "timings": timings,
        "saved": saved,
        "metrics": result.metrics(),
        "task": result.task,
    }
    if result.stages:
        summary["stages"] = result.stages  # memorisation and generalisation per stage end (SoRA scheduler)
    return summary


def _transfer_kit(request, task, data, out_dir, base_path, reporter, ctx, steps) -> dict[str, Any] | None:
    """The optional last stage: a transfer kit next to the adapter (never fails the job; see after_training)."""
    from studio.transfer.after_training import keep_transfer_kit

    return keep_transfer_kit(request, task, data.path, out_dir, base_path, reporter, ctx, steps)


def _record_timings(
    ctx: JobContext, result: TrainingResult, base_path: Path, rows: int, save_s: float, reporter
) -> dict:
    """Where the run's time went; kept in the data dir so that later estimates learn from it."""
    from studio.training.duration import record_finished_run

    try:
        timings = record_finished_run(ctx.settings, ctx.device, result, base_path, rows or 0, save_s)
    except OSError as exc:  # an estimate that does not learn is no reason to fail a finished job
        reporter.log(f"could not keep the run's timings for later estimates: {exc}", "warning")
        return {}
    reporter.log(
        f"time: setup {timings['setup_s']:.0f} s, {timings['steps']} steps {timings['train_s']:.0f} s, "
        f"{timings['eval_passes']} validation passes {timings['eval_s']:.0f} s, saving {save_s:.0f} s"
    )
    return timings


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def save_trained_adapter(
    result: TrainingResult,
    request: TrainRequest,
    out_dir: Path,
    *,
    dataset_sha256: str = "",
    job_id: int | None = None,
) -> dict[str, Any]:
    """Write the adapter, labels, model card and reproducibility bundle; returns ranks, sha256, size."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = result.variant.save_adapter(result.model, out_dir, result.export_context())
    if result.labels is not None:
        (out_dir / "labels.json").write_text(json.dumps([str(label) for label in result.labels]))
    repro = reproducibility(request, result, dataset_sha256, job_id)
    (out_dir / "reproducibility.json").write_text(json.dumps(repro, indent=2, default=str))
    (out_dir / "README.md").write_text(model_card(request, result, report.ranks, dataset_sha256, out_dir))
    weights = out_dir / ADAPTER_FILE
    return {
        "ranks": report.ranks,
        "format": report.format,
        "sha256": sha256_file(weights),
        "size_bytes": dir_size(out_dir),
    }


def reproducibility(request: TrainRequest, result: TrainingResult, dataset_sha256: str, job_id: int | None) -> dict:
    """What it takes to re-run this adapter: the request, seed, data hash and library/code versions."""
    from studio import __version__
    from studio.versions import library_versions

    return {
        "schema_version": SCHEMA_VERSION,
        "job_id": job_id,
        "request": request.model_dump(mode="json"),
        "seed": request.seed,
        "dataset_sha256": dataset_sha256,
        "task": result.task,
        "total_steps": result.total_steps,
        "resumed_from_step": result.resumed_from_step,
        "variant_params": result.variant.params.model_dump(mode="json"),
        "precision": result.precision.name if result.precision else None,
        "training_setup": result.training_setup(request.hyper),
        "versions": {**library_versions(), "studio": __version__},
    }


def model_card(
    request: TrainRequest, result: TrainingResult, ranks: dict[str, int], dataset_sha256: str, adapter_dir: Path
) -> str:
    """A short README for the adapter: what it is, how it was trained, how well, how to load it.

    The base is named by its portable id (a hub id, or a local directory's folder name), never by
    a path of this server; a download rewrites the loading recipes with its folder's real name.
    """
    from studio.services.downloads import PortableBase, adapter_loading_section

    variant = result.variant
    base = PortableBase.of(request.base_model)
    hyper = request.hyper.model_dump(mode="json")
    params = variant.params.model_dump(mode="json")
    metrics = result.metrics()
    lines = [
        f"# {request.name or variant.title + ' adapter'}",
        "",
        f"A **{variant.title}** adapter for `{base.portable_id}` ({result.task}), trained with Adapter Studio.",
        "",
        f"- Variant: `{variant.name}` — {variant.summary}",
        f"- Paper: {variant.paper.title} ({variant.paper.year}), {variant.paper.url}" if variant.paper else "",
        f"- Base model: `{base.portable_id}`" + (f" (`{request.base_model}` in the studio)" if base.bundled else ""),
        f"- Dataset: id {request.dataset_id}, sha256 `{dataset_sha256 or 'unknown'}`",
        f"- Seed: {request.seed}; steps: {result.total_steps}; trainable parameters: {result.trainable_params:,}",
        f"- Compute: {result.precision.describe()}" if result.precision else None,
        f"- Adapted modules: {len(ranks)}; ranks {min(ranks.values(), default=0)}–{max(ranks.values(), default=0)}",
        "",
        "## Final metrics",
        "",
        *[f"- {k}: {v:.4f}" for k, v in metrics.items()],
        "",
        "## Hyper-parameters",
        "",
        "```json",
        json.dumps({"training": hyper, "variant": params}, indent=2),
        "```",
        "",
        *(variant.model_card_loading() or []),  # a variant's own steps (LoRAPrune's masks) come first
        *adapter_loading_section(adapter_dir, base),
    ]
    return "\n".join(line for line in lines if line is not None)
