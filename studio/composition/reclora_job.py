"""The ``personalise`` job: a dataset with a user column in, a registered RecLoRA bundle out.

Steps: read the rows with their users (:mod:`studio.composition.reclora_data`), build the
personalised model on a fresh fp32 copy of the base (one gate row per user of the data, or
the features' gate when a user-features file is given), train meta-LoRAs and gate together
(:func:`studio.composition.reclora_train.train_personalised`), save the bundle
(:func:`studio.composition.reclora_export.save_bundle`) under ``<adapters_dir>/<uuid>/`` and
register it as an adapter of variant ``reclora``: ``ranks`` are each module's per-user export
rank K·r, the metrics hold K, r and the user count beside the losses. No new registry
columns are needed: per-user adapters are exported from the bundle when asked for
(:mod:`studio.composition.reclora_users`).
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from studio.progress import Reporter
from studio.schema import SCHEMA_VERSION, PersonaliseRequest

VARIANT = "reclora"


def run_personalise_job(request: PersonaliseRequest, reporter: Reporter, ctx: Any) -> dict[str, Any]:
    """Train a personalised (RecLoRA) model, save the bundle and register it; returns its id and losses."""
    import torch

    from studio.composition.reclora import PersonalisedModel
    from studio.composition.reclora_data import rows_with_users
    from studio.composition.reclora_export import BUNDLE_TENSORS, save_bundle
    from studio.composition.reclora_train import train_personalised, users_of
    from studio.models.base_models import resolve_base_model
    from studio.training.job import dir_size, sha256_file
    from studio.training.memory import release_memory
    from studio.training.models import load_base_model, load_tokenizer_for

    registry = ctx.registry
    dataset = registry.get_dataset(request.dataset_id)
    rows = rows_with_users(dataset, request.user_column)
    users = users_of(rows, request.user_column)
    features = _features(request, users)
    resolved = resolve_base_model(request.base_model, ctx.settings, progress=reporter.log)
    reporter.log(
        f"RecLoRA on dataset {request.dataset_id}: {len(rows)} rows, {len(users)} users, "
        f"K={request.n_meta} meta-LoRAs of rank {request.rank}, {request.steps} steps"
    )
    torch.manual_seed(request.seed)
    tokenizer = load_tokenizer_for(resolved.path)
    base = load_base_model(resolved.path, "causal-lm").to(ctx.device.torch_device)
    config = request.reclora_config(None if features is None else features.shape[1])
    pm = PersonalisedModel(base, users, config, features=features)

    def progress(step: int, total: int, loss: float) -> None:
        reporter.check_cancelled()  # a cancelled job stops between steps, like a training job
        reporter.progress(step, total)
        if step % request.log_every == 0 or step == total:
            reporter.metrics(step, {"loss": loss})

    run = train_personalised(
        pm,
        tokenizer,
        rows,
        user_column=request.user_column,
        steps=request.steps,
        batch_size=request.batch_size,
        learning_rate=request.learning_rate,
        gate_learning_rate=request.gate_learning_rate,
        max_length=request.max_length,
        loss_on=request.loss_on,
        seed=request.seed,
        progress=progress,
        log=reporter.log,
    )
    out_dir = Path(ctx.settings.adapters_dir) / uuid.uuid4().hex
    try:
        save_bundle(pm, out_dir, base_model=request.base_model)
        tokenizer.save_pretrained(str(out_dir))  # the chat template training used, for downloads
        (out_dir / "reproducibility.json").write_text(json.dumps(_record(request, ctx.job_id, run), indent=2))
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    units = request.n_meta * request.rank
    tail = run.losses[-max(1, min(10, len(run.losses))) :]
    metrics = {
        "final_loss": sum(tail) / len(tail),
        "reclora_k": float(request.n_meta),
        "reclora_r": float(request.rank),
        "reclora_users": float(len(users)),
    }
    row = registry.add_adapter(
        name=request.name or f"RecLoRA on {dataset.name or f'dataset {request.dataset_id}'} (job {ctx.job_id})",
        variant=VARIANT,
        base_model=request.base_model,
        dataset_id=request.dataset_id,
        ranks={name: units for name in pm.meta_layers()},
        trainable_params=sum(p.numel() for p in pm.trainable_parameters()),
        size_bytes=dir_size(out_dir),
        path=str(out_dir),
        sha256=sha256_file(out_dir / BUNDLE_TENSORS),
        source_job_id=ctx.job_id,
        metrics=metrics,
    )
    reporter.log(f"personalised adapter {row.id} saved to {out_dir}: {len(users)} users, per-user rank {units}")
    del pm, base
    release_memory()
    return {
        "adapter_id": row.id,
        "adapter_path": str(out_dir),
        "users": len(users),
        "steps": run.steps,
        "rows": run.rows,
        "dropped_rows": run.dropped,
        **metrics,
    }


def _features(request: PersonaliseRequest, users: list[str]):
    """The (users, feature_dim) tensor of the request's user-features file, or None for learned embeddings."""
    if not request.user_features_path:
        return None
    from studio.composition.user_features import features_matrix, read_user_features

    return features_matrix(read_user_features(request.user_features_path, request.user_column), users)


def _record(request: PersonaliseRequest, job_id: int | None, run: Any) -> dict[str, Any]:
    from studio import __version__
    from studio.versions import library_versions

    return {
        "schema_version": SCHEMA_VERSION,
        "job_id": job_id,
        "request": request.model_dump(mode="json"),
        "losses": run.losses,
        "versions": {**library_versions(), "studio": __version__},
    }
