"""The ``transfer`` job: a registered causal-LM adapter with a transfer kit + a target base in, a LoRA on the target out.

Steps (composition spec §5, see :func:`studio.transfer.pipeline.transfer`): read the source's kit,
let the target write inputs from the seeds, keep those the discriminator judges real, have the
source base + adapter answer them, train a LoRA on the target. Progress text and metrics carry
the counts (``generated``, ``kept``, ``trained``); the student's loss curve is the job's.

The result is registered as a plain ``lora`` adapter on ``target_base`` with the source adapter
as its parent (lineage), plus ``transfer.json`` and ``synthetic.jsonl`` in its directory.
A source the serving engine cannot hold as it is (DoRA, MiSS, ...) answers through its plain-LoRA
export (:func:`studio.serving.servable.served_lora`).
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from studio.errors import ValidationFailed
from studio.progress import Reporter
from studio.schema import SCHEMA_VERSION, TransferRequest
from studio.transfer.kit import KIT_DIR, KIT_FILE, TransferKit, load_transfer_kit
from studio.transfer.pipeline import TransferCounts
from studio.transfer.reporting import StageReporter

NO_KIT = (
    "adapter #{id} has no transfer kit, so it cannot be transferred: retrain it with transfer_kit on "
    "(Train tab: 'Keep a transfer kit'; CLI: the default), or train an adapter on the new base directly"
)


def has_kit(adapter_dir: str | Path) -> bool:
    """Whether an adapter directory holds a complete transfer kit."""
    return (Path(adapter_dir) / KIT_DIR / KIT_FILE).is_file()


def require_kit(adapter: Any) -> None:
    """Raise ValidationFailed (what to do instead) when the registered ``adapter`` has no kit."""
    if not has_kit(adapter.path):
        raise ValidationFailed(NO_KIT.format(id=adapter.id))


def same_base(source_base: str, target_base: str) -> bool:
    """True when ``target_base`` names the model ``source_base`` names (the same id, or one directory)."""
    if source_base.strip() == target_base.strip():
        return True
    source, target = Path(source_base).expanduser(), Path(target_base).expanduser()
    return source.is_dir() and target.is_dir() and source.resolve() == target.resolve()


def refuse_own_base(source: Any, target_base: str) -> None:
    """Refuse a transfer onto the base the adapter is already for.

    The Transfer tab's Target base picker starts on the studio's default base, which is the base of most
    adapters, so one click would spend many minutes re-training the adapter where it already works; checked
    at submission for the UI, the CLI and the API alike.
    """
    if same_base(source.base_model, target_base):
        raise ValidationFailed(
            f"Target base: adapter #{source.id} is already for {source.base_model}. Choose the new base model "
            "you want to carry it to (pick one or type a local model directory)."
        )


def wanted_inputs(options: Any, seeds: int) -> int:
    """How many inputs the transfer trains on at most: ``samples``, or the seeds when samples is 0 (seeds only)."""
    return options.samples or seeds


def counts_text(counts: TransferCounts, options: Any) -> str:
    """'generating: 48 written, 20 of 64 kept, 0 trained' — the job's progress line."""
    if not options.samples:
        return f"{counts.stage}: seeds only, {counts.kept} seed inputs, {counts.trained} trained"
    return (
        f"{counts.stage}: {counts.generated} written, {counts.kept} of {options.samples} kept, {counts.trained} trained"
    )


def run_transfer_job(request: TransferRequest, reporter: Reporter, ctx: Any) -> dict[str, Any]:
    """Transfer ``request.adapter_id`` to ``request.target_base`` and register the result; returns its id and counts."""
    from studio.models.base_models import resolve_base_model
    from studio.training.job import dir_size, sha256_file
    from studio.training.memory import release_memory
    from studio.transfer.pipeline import transfer

    registry = ctx.registry
    source = registry.get_adapter(request.adapter_id)
    require_kit(source)
    source_base = resolve_base_model(source.base_model, ctx.settings, progress=reporter.log).path
    target_base = resolve_base_model(request.target_base, ctx.settings, progress=reporter.log).path
    kit = _kit(Path(source.path), source_base)
    teacher = _teacher_dir(source, source_base, reporter)
    options = request.options
    seeds = len(kit.seeds)
    total = wanted_inputs(options, seeds)
    plan = (
        f"up to {options.samples} inputs kept of at most {options.max_attempts} written"
        if options.samples
        else "seeds only (no synthetic inputs)"
    )
    reporter.log(
        f"transfer of adapter #{source.id} ({source.base_model}) to {request.target_base}: {seeds} seeds, {plan}"
    )

    latest = TransferCounts()
    rounds = [0]

    def on_progress(counts: TransferCounts) -> None:
        latest.__dict__.update(asdict(counts))
        if counts.stage == "generating":
            reporter.progress(counts.kept, total, counts_text(counts, options))
        elif counts.stage != "training":
            reporter.progress(total, total, counts_text(counts, options))
        rounds[0] += 1
        reporter.metrics(rounds[0], {"generated": counts.generated, "kept": counts.kept, "trained": counts.trained})

    student_reporter = StageReporter(
        reporter,
        lambda step, total: (
            f"training: step {step}/{total or '?'} on {latest.trained} answered inputs "
            f"({latest.generated} written, {latest.kept} kept)"
        ),
        keep_metrics=True,  # the student's loss curve is the job's
    )
    out_dir = Path(ctx.settings.adapters_dir) / uuid.uuid4().hex
    try:
        result = transfer(
            source_base,
            teacher,
            kit,
            target_base,
            out_dir,
            options=options,
            device=ctx.device,
            work_dir=Path(ctx.work_dir) / "transfer",
            settings=ctx.settings,
            reporter=student_reporter,
            on_progress=on_progress,
        )
        ranks = _ranks(out_dir)
        _copy_tokenizer(target_base, out_dir)
        (out_dir / "reproducibility.json").write_text(json.dumps(_record(request, source, ctx.job_id), indent=2))
        (out_dir / "README.md").write_text(model_card(request, source, result, ranks))
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)  # no half-written adapter is left behind
        raise

    counts = result.counts
    metrics = {
        "transfer_generated": float(counts.generated),
        "transfer_kept": float(counts.kept),
        "transfer_trained": float(counts.trained),
    }
    if result.final_loss is not None:
        metrics["final_loss"] = float(result.final_loss)
    name = request.name or f"#{source.id} {source.name} → {Path(request.target_base).name}"
    row = registry.add_adapter(
        name=name[:200],
        variant="lora",
        base_model=request.target_base,
        dataset_id=None,
        ranks=ranks,
        trainable_params=_trainable_params(out_dir),
        size_bytes=dir_size(out_dir),
        path=str(out_dir),
        sha256=sha256_file(out_dir / "adapter_model.safetensors"),
        source_job_id=ctx.job_id,
        parents=[source.id],
        metrics=metrics,
    )
    reporter.progress(total, total, counts_text(counts, options))
    reporter.log(
        f"adapter {row.id} saved to {out_dir}: trained on {counts.trained} synthetic examples "
        f"({counts.generated} written, {counts.kept} kept)"
    )
    del result
    release_memory()
    return {
        "adapter_id": row.id,
        "adapter_path": str(out_dir),
        "source_adapter_id": source.id,
        "target_base": request.target_base,
        "generated": counts.generated,
        "kept": counts.kept,
        "trained": counts.trained,
        "final_loss": metrics.get("final_loss"),
        "steps": _steps(out_dir),
    }


def _kit(adapter_dir: Path, source_base: Path) -> TransferKit:
    """The adapter's kit; a discriminator trained on the source base follows that base to where it resolves now."""
    kit = load_transfer_kit(adapter_dir)
    if kit.meta.get("discriminator_base") == kit.meta.get("source_base"):
        kit = load_transfer_kit(adapter_dir, discriminator_base=source_base)
    if not kit.discriminator_base.exists():
        raise ValidationFailed(
            f"the kit's discriminator base {kit.discriminator_base} is gone; put the model back or retrain the adapter"
        )
    return kit


def _teacher_dir(source: Any, source_base: Path, reporter: Reporter) -> Path:
    """The directory the engine answers with: the adapter, or its plain-LoRA export when the engine refuses it."""
    from studio.serving.servable import served_lora
    from studio.training.models import load_base_model

    served = served_lora(source.path, lambda: load_base_model(source_base, "causal-lm"), variant=source.variant)
    if served is None:
        return Path(source.path)
    reporter.log(f"the source adapter ({source.variant}) answers through its plain-LoRA export: {served.describe()}")
    return Path(served.path)


def _ranks(out_dir: Path) -> dict[str, int]:
    """Rank per adapted module of the saved student, read from its weights."""
    from safetensors import safe_open

    ranks: dict[str, int] = {}
    with safe_open(str(out_dir / "adapter_model.safetensors"), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
            if ".lora_A." in key:
                ranks[key.split(".lora_A.")[0].removeprefix("base_model.model.")] = int(
                    handle.get_slice(key).get_shape()[0]
                )
    return ranks


def _trainable_params(out_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(out_dir / "adapter_model.safetensors"), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118
            shape = handle.get_slice(key).get_shape()
            count = 1
            for size in shape:
                count *= size
            total += count
    return total


def _steps(out_dir: Path) -> int | None:
    lineage = out_dir / "transfer.json"
    return json.loads(lineage.read_text()).get("steps") if lineage.exists() else None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def _copy_tokenizer(base_dir: Path, out_dir: Path) -> None:
    """The target's tokenizer files (when the student's export wrote none), as a trained adapter carries them."""
    for name in TOKENIZER_FILES:
        if (base_dir / name).is_file() and not (out_dir / name).exists():
            shutil.copy2(base_dir / name, out_dir / name)


def _record(request: TransferRequest, source: Any, job_id: int | None) -> dict[str, Any]:
    from studio import __version__
    from studio.versions import library_versions

    return {
        "schema_version": SCHEMA_VERSION,
        "job_id": job_id,
        "request": request.model_dump(mode="json"),
        "source": {
            "id": source.id,
            "name": source.name,
            "variant": source.variant,
            "base_model": source.base_model,
            "sha256": source.sha256,
            "source_job_id": source.source_job_id,
        },
        "versions": {**library_versions(), "studio": __version__},
    }


def model_card(request: TransferRequest, source: Any, result: Any, ranks: dict[str, int]) -> str:
    """A short README: what was transferred from where, on how much synthetic data, how to load it."""
    from studio.loading_recipes import loading_section
    from studio.services.downloads import PortableBase

    base = PortableBase.of(request.target_base)
    counts = result.counts
    lines = [
        f"# {request.name or 'Transferred adapter'}",
        "",
        f"A plain PEFT LoRA for `{base.portable_id}`, made by Adapter Studio with Trans-LoRA from adapter "
        f"#{source.id} {source.name} ({source.variant} on `{PortableBase.of(source.base_model).portable_id}`).",
        "",
        (
            f"- Synthetic inputs written by the new base: {counts.generated}; kept by the discriminator: {counts.kept} "
            f"(threshold {request.options.threshold:g}{'' if request.options.use_filter else ', filter off'})"
            if request.options.samples
            else f"- Seeds only: no synthetic inputs, the source answered the kit's {counts.kept} seed inputs"
        ),
        f"- Answered by the source adapter and trained on: {counts.trained} (prompt masked)",
        f"- Steps: {result.steps}; final loss: {result.final_loss:.4f}" if result.final_loss is not None else None,
        f"- Modules: {len(ranks)}; ranks {min(ranks.values(), default=0)}–{max(ranks.values(), default=0)}",
        "- The synthetic examples are in `synthetic.jsonl`, the settings and counts in `transfer.json`.",
        "",
        *loading_section(base.portable_id, "causal-lm", max_rank=max(ranks.values(), default=8), base_note=base.note()),
    ]
    return "\n".join(line for line in lines if line is not None)
