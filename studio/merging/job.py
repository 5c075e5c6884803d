"""The ``merge`` job: several adapters of one base model in, one registered plain PEFT LoRA out.

Steps: check the parents (:func:`studio.merging.checks.check_mergeable`), load them onto
one copy of the base, merge module by module with the request's method (looked up in
:mod:`studio.merging.registry`: the dense methods read each parent's ΔW through PEFT
(:mod:`studio.merging.deltas`), merge it and factorise it into B′A′ at the requested rank,
by default the sum of the parents' ranks there, exact for a linear merge of LoRAs
(:mod:`studio.merging.lowrank`); LoRA-LEGO clusters the parents' rank units into B′A′
directly, :mod:`studio.merging.lego`) and write it with the same exporter trained adapters use. The relative Frobenius error per module is kept
in ``export_report.json`` and as the adapter's ``merge_max_error`` metric.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from studio.merging.checks import check_mergeable
from studio.merging.deltas import ParentChanges
from studio.merging.error_meaning import EXACT_ERROR
from studio.merging.registry import METHODS, describe_options
from studio.progress import Reporter
from studio.schema import SCHEMA_VERSION, MergeRequest

# Shares of the progress bar: loading the base and the parents, merging + factorising, writing.
READ_SHARE, MERGE_SHARE = 0.4, 0.55
PROGRESS_STEPS = 1000


# Files of a parent adapter that describe its tokenizer (the chat template training used).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def run_merge_job(request: MergeRequest, reporter: Reporter, ctx: Any) -> dict[str, Any]:
    """Merge ``request.adapter_ids`` and register the result; returns its id, ranks and errors."""
    from studio.models.base_models import resolve_base_model
    from studio.training.job import dir_size, sha256_file
    from studio.training.memory import release_memory

    registry = ctx.registry
    parents = [registry.get_adapter(adapter_id) for adapter_id in request.adapter_ids]
    check_mergeable(parents, request.method)
    weights = request.resolved_weights()
    base_model = parents[0].base_model
    base_path = resolve_base_model(base_model, ctx.settings, progress=reporter.log).path
    reporter.log(
        f"{request.method} merge of {', '.join(f'#{p.id} × {w:g}' for p, w in zip(parents, weights, strict=True))} "
        f"on {base_model}" + describe_options(request.method, request)
    )

    def on_load(i: int) -> None:
        reporter.check_cancelled()
        _progress(reporter, READ_SHARE * i / len(parents), f"loading adapter #{parents[i].id}")

    changes = ParentChanges([(Path(p.path), f"adapter #{p.id}") for p in parents], base_path, on_load)
    factors, errors = _merge_modules(request, changes, weights, reporter)
    del changes  # the base and the parents: the merged factors are all that is needed from here
    _progress(reporter, READ_SHARE + MERGE_SHARE, "writing the merged adapter")

    out_dir = Path(ctx.settings.adapters_dir) / uuid.uuid4().hex
    try:
        written = _write(factors, out_dir, base_path)
        report = {"exact": max(errors.values(), default=0.0) < EXACT_ERROR, "errors": errors, "ranks": written}
        (out_dir / "export_report.json").write_text(json.dumps(report, indent=2))
        _copy_tokenizer(Path(parents[0].path), out_dir)
        record = _record(request, parents, weights, ctx.job_id)
        (out_dir / "reproducibility.json").write_text(json.dumps(record, indent=2))
        (out_dir / "README.md").write_text(model_card(request, parents, weights, written, errors))
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)  # no half-written adapter is left behind
        raise

    metrics = {"merge_max_error": max(errors.values(), default=0.0), "merge_mean_error": _mean(errors)}
    name = request.name or f"{request.method} merge of " + " + ".join(f"#{p.id}" for p in parents)
    row = registry.add_adapter(
        name=name,
        variant="merge",
        base_model=base_model,
        dataset_id=None,
        ranks=written,
        trainable_params=sum(b.numel() + a.numel() for b, a in factors.values()),
        size_bytes=dir_size(out_dir),
        path=str(out_dir),
        sha256=sha256_file(out_dir / "adapter_model.safetensors"),
        source_job_id=ctx.job_id,
        parents=[p.id for p in parents],
        metrics=metrics,
    )
    reporter.metrics(len(parents), metrics)
    _progress(reporter, 1.0, "done")
    reporter.log(
        f"adapter {row.id} saved to {out_dir}: {len(written)} modules, ranks {min(written.values())}–"
        f"{max(written.values())}, largest relative error {metrics['merge_max_error']:.2e}"
    )
    del factors
    release_memory()
    return {
        "adapter_id": row.id,
        "adapter_path": str(out_dir),
        "method": request.method,
        "weights": weights,
        "parents": [p.id for p in parents],
        "modules": len(written),
        "rank_min": min(written.values()),
        "rank_max": max(written.values()),
        **metrics,
    }


def _merge_modules(request: MergeRequest, changes: ParentChanges, weights: list[float], reporter: Reporter):
    """({module: (B′, A′)}, {module: relative error}) of the merged ΔW of every module, one module at a time."""
    merge_module = METHODS[request.method].load()
    names = changes.module_names
    factors, errors = {}, {}
    for done, name in enumerate(names):
        reporter.check_cancelled()
        _progress(reporter, READ_SHARE + MERGE_SHARE * done / len(names), "merging modules" if not done else None)
        b, a, error = merge_module(request, changes, name, weights)
        factors[name], errors[name] = (b, a), error
    return factors, errors


def _progress(reporter: Reporter, fraction: float, message: str | None) -> None:
    """Progress as a share of the whole job (steps of 1/1000): the module count is known only after reading."""
    reporter.progress(round(fraction * PROGRESS_STEPS), PROGRESS_STEPS, message)


def _write(factors: dict, out_dir: Path, base_path: Path) -> dict[str, int]:
    """The merged factors as a PEFT LoRA on the base (scale 1 in every module); returns the ranks written."""
    from studio.training.models import load_base_model
    from studio.variants.base import ExportContext
    from studio.variants.lora_export import write_plain_lora

    kept = {name: (b, a) for name, (b, a) in factors.items() if b.shape[1] > 0}
    if not kept:
        from studio.errors import ValidationFailed

        raise ValidationFailed("the merged adapters cancel out: the merge changes no weight")
    ectx = ExportContext(fresh_base=lambda: load_base_model(Path(base_path), "causal-lm"), task="causal-lm")
    return write_plain_lora(kept, out_dir, ectx, heads={})


def _copy_tokenizer(parent_dir: Path, out_dir: Path) -> None:
    for name in TOKENIZER_FILES:
        if (parent_dir / name).is_file():
            shutil.copy2(parent_dir / name, out_dir / name)


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values) if values else 0.0


def _record(request: MergeRequest, parents: list, weights: list[float], job_id: int | None) -> dict[str, Any]:
    from studio import __version__
    from studio.versions import library_versions

    return {
        "schema_version": SCHEMA_VERSION,
        "job_id": job_id,
        "request": request.model_dump(mode="json"),
        "weights": weights,
        "parents": [
            {"id": p.id, "name": p.name, "variant": p.variant, "sha256": p.sha256, "source_job_id": p.source_job_id}
            for p in parents
        ],
        "versions": {**library_versions(), "studio": __version__},
    }


def model_card(
    request: MergeRequest, parents: list, weights: list[float], ranks: dict[str, int], errors: dict[str, float]
) -> str:
    """A short README for the merged adapter: its parents, the method, how close the LoRA is, how to load it."""
    from studio.loading_recipes import loading_section
    from studio.services.downloads import PortableBase

    base = PortableBase.of(parents[0].base_model)

    method = METHODS[request.method].title
    lines = [
        f"# {request.name or 'Merged adapter'}",
        "",
        f"A plain PEFT LoRA for `{base.portable_id}`, made by Adapter Studio with {method} of:",
        "",
        *[f"- #{p.id} {p.name} ({p.variant}), weight {w:g}" for p, w in zip(parents, weights, strict=True)],
        "",
        f"- Method: `{request.method}`" + describe_options(request.method, request),
        f"- Modules: {len(ranks)}; ranks {min(ranks.values())}–{max(ranks.values())}",
        f"- Largest relative error of the LoRA against the merged weight change: {max(errors.values()):.2e}",
        "",
        # Merging refuses classifiers: a merged adapter is always a causal-LM LoRA.
        *loading_section(base.portable_id, "causal-lm", max_rank=max(ranks.values()), base_note=base.note()),
    ]
    return "\n".join(lines)
