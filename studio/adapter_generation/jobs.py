"""The ``generator`` and ``generate`` jobs: ICM-LoRA from the registry (spec §6).

``generator``: adapters of several tasks (one base model, one LoRA shape) in; each
adapter's checkpoints kept along training (``hyper.keep_checkpoints``; the final adapter
alone, with a warning, when it kept none) are the training items of its task, conditioned
on the task vector the base computes from the first rows of the adapter's training
dataset. The trained generator directory (:class:`~studio.adapter_generation.generator.Generator`)
is registered as an adapter row of variant ``icm_generator`` -- no new table: the row's
path is the generator directory and its parents are the source adapters. Such a row is
not an adapter one can chat with or evaluate; the playground and the job checks refuse it.

``generate``: a generator and a dataset of a new task in; the task vector of the first
rows decodes into a standard PEFT LoRA, registered as a ``lora`` adapter on the
generator's base with the generator as its parent, so it evaluates, chats and downloads
like any trained adapter.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from studio.errors import ValidationFailed
from studio.progress import Reporter
from studio.schema import SCHEMA_VERSION, GenerateRequest, GeneratorRequest

GENERATOR_VARIANT = "icm_generator"
# Files of a source adapter that describe its tokenizer (the chat template training used).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
PROGRESS_STEPS = 1000
VECTOR_SHARE = 0.1  # of a generator job's progress bar: the task vectors; the rest is training


def task_key(adapter_id: int) -> str:
    """The generator's name for the task of a source adapter (its references are keyed by it)."""
    return f"adapter-{adapter_id}"


# Checks shared by the job service (at submit time) and the handlers -----------------------------------


def check_generator_sources(registry: Any, request: GeneratorRequest) -> list[Any]:
    """The source adapters' rows, refused with a message when they cannot train one generator."""
    rows = [registry.get_adapter(i) for i in request.adapter_ids]
    for row in rows:
        if row.variant == GENERATOR_VARIANT:
            raise ValidationFailed(f"#{row.id} is a generator, not an adapter: give the adapters of the tasks")
        if row.dataset_id is None:
            raise ValidationFailed(
                f"adapter #{row.id} has no training dataset in the registry (a merged adapter, or its dataset "
                "was deleted): the generator needs examples of each adapter's task"
            )
        registry.get_dataset(row.dataset_id)  # NotFoundError names it
    bases = {row.base_model for row in rows}
    if len(bases) > 1:
        listed = ", ".join(f"#{row.id} on {row.base_model}" for row in rows)
        raise ValidationFailed(f"a generator learns adapters of one base model; these are of several: {listed}")
    signatures = {row.id: _signature(Path(row.path)) for row in rows}
    first = rows[0]
    for row in rows[1:]:
        if signatures[row.id] != signatures[first.id]:
            raise ValidationFailed(
                f"adapter #{row.id} does not have the same LoRA tensors (keys and shapes) as #{first.id}: a "
                "generator learns adapters of one rank and one set of target modules"
            )
    return rows


def _signature(adapter_dir: Path) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(key, shape) of every tensor of a PEFT adapter, read from the safetensors header only."""
    from safetensors import safe_open

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise ValidationFailed(f"{adapter_dir} has no adapter_model.safetensors: only PEFT LoRAs can be learnt")
    with safe_open(str(path), framework="pt") as handle:
        return tuple(sorted((key, tuple(handle.get_slice(key).get_shape())) for key in handle.keys()))  # noqa: SIM118


def check_generator_row(registry: Any, generator_id: int) -> Any:
    """The registry row of a generator; ValidationFailed for any other adapter."""
    row = registry.get_adapter(generator_id)
    if row.variant != GENERATOR_VARIANT:
        raise ValidationFailed(
            f"adapter #{generator_id} is a {row.variant} adapter, not a generator; train one with a generator job"
        )
    return row


# Shared steps --------------------------------------------------------------------------------------


def task_rows(registry: Any, dataset_id: int, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` canonical rows of a registered dataset."""
    from studio.datasets.normalise import read_jsonl

    rows = read_jsonl(Path(registry.get_dataset(dataset_id).stored_path), limit=limit)
    if not rows:
        raise ValidationFailed(f"dataset #{dataset_id} has no rows to compute a task vector from")
    return rows


class BaseEncoder:
    """The base model and tokenizer, loaded once, turning a dataset into its task vector."""

    def __init__(self, base_path: Path):
        from studio.training.models import load_base_model, load_tokenizer_for

        self.tokenizer = load_tokenizer_for(base_path)
        self.model = load_base_model(base_path, "causal-lm")

    def vector(self, rows: list[dict[str, Any]], examples: int) -> Any:
        from studio.adapter_generation.task_vector import task_vector

        return task_vector(self.model, self.tokenizer, rows, max_examples=examples)


def _progress(reporter: Reporter, fraction: float, message: str | None = None) -> None:
    reporter.progress(round(fraction * PROGRESS_STEPS), PROGRESS_STEPS, message)


# The generator job ---------------------------------------------------------------------------------


def run_generator_job(request: GeneratorRequest, reporter: Reporter, ctx: Any) -> dict[str, Any]:
    """Train a generator on the request's adapters and register it; returns its id, size and losses."""
    from studio.adapter_generation.cvae import preset
    from studio.adapter_generation.generator import Checkpoint, train_generator
    from studio.models.base_models import resolve_base_model
    from studio.training.job import dir_size, sha256_file
    from studio.training.kept_adapters import kept_adapter_dirs
    from studio.training.memory import release_memory

    registry = ctx.registry
    rows = check_generator_sources(registry, request)
    config = preset(request.preset)
    checkpoints: list[Checkpoint] = []
    for row in rows:
        kept = kept_adapter_dirs(row.path)
        if not kept:
            reporter.log(
                f"adapter #{row.id} kept no checkpoints along training (train with keep_checkpoints): its "
                "final adapter is its task's only example",
                "warning",
            )
            kept = [Path(row.path)]
        checkpoints += [Checkpoint(path, task_key(row.id)) for path in kept]
    reporter.log(
        f"generator ({request.preset}) over {len(checkpoints)} checkpoints of {len(rows)} tasks: "
        + ", ".join(f"#{r.id} {r.name}" for r in rows)
    )
    base_model = rows[0].base_model
    base_path = resolve_base_model(base_model, ctx.settings, progress=reporter.log).path
    encoder = BaseEncoder(base_path)
    vectors = {}
    for i, row in enumerate(rows):
        reporter.check_cancelled()
        _progress(reporter, VECTOR_SHARE * i / len(rows), "computing task vectors" if not i else None)
        vectors[task_key(row.id)] = encoder.vector(
            task_rows(registry, row.dataset_id, request.examples), request.examples
        )
    del encoder
    _progress(reporter, VECTOR_SHARE, "training the generator")

    def on_epoch(epoch: int, epochs: int, loss: float) -> None:
        reporter.check_cancelled()
        _progress(reporter, VECTOR_SHARE + (1 - VECTOR_SHARE) * epoch / epochs)
        reporter.metrics(epoch, {"loss": loss})

    generator = train_generator(
        checkpoints,
        vectors,
        config,
        epochs=request.epochs,
        seed=request.seed,
        progress=on_epoch,
        lr=request.learning_rate,
        device=ctx.device.torch_device,
    )
    out_dir = Path(ctx.settings.adapters_dir) / uuid.uuid4().hex
    try:
        generator.save(out_dir)
        (out_dir / "reproducibility.json").write_text(json.dumps(_record(request, rows, ctx.job_id), indent=2))
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    size = dir_size(out_dir)
    stands_for = sum(_weights_size(c.path) for c in checkpoints)  # the paper's headline: ~1 % of the LoRAs
    loss, mse, kl = generator.history[-1]
    metrics = {
        "final_loss": loss,
        "final_mse": mse,
        "final_kl": kl,
        "checkpoints": float(len(checkpoints)),
        "size_vs_checkpoints": size / stands_for if stands_for else 0.0,
    }
    name = request.name or "ICM-LoRA generator over " + ", ".join(f"#{r.id}" for r in rows)
    row = registry.add_adapter(
        name=name,
        variant=GENERATOR_VARIANT,
        base_model=base_model,
        dataset_id=None,
        ranks=dict(rows[0].ranks or {}),  # what every generated adapter will have
        trainable_params=generator.parameter_count(),
        size_bytes=size,
        path=str(out_dir),
        sha256=sha256_file(out_dir / "generator.safetensors"),
        source_job_id=ctx.job_id,
        parents=[r.id for r in rows],
        metrics=metrics,
    )
    _progress(reporter, 1.0, "done")
    reporter.log(
        f"generator {row.id} saved to {out_dir}: {generator.parameter_count():,} parameters, "
        f"{size / 1e6:.2f} MB = {metrics['size_vs_checkpoints']:.1%} of the {len(checkpoints)} checkpoints it learnt; "
        f"final loss {loss:.4g} (reconstruction {mse:.4g})"
    )
    del generator
    release_memory()
    return {
        "generator_id": row.id,
        "adapter_id": row.id,
        "generator_path": str(out_dir),
        "tasks": [r.id for r in rows],
        "checkpoints": len(checkpoints),
        "parameters": row.trainable_params,
        **metrics,
    }


def _weights_size(adapter_dir: Path) -> int:
    """The bytes of an adapter's weights and config (not its model card, tokenizer or kept checkpoints)."""
    return sum((adapter_dir / n).stat().st_size for n in ("adapter_model.safetensors", "adapter_config.json"))


def _record(request: Any, parents: list[Any], job_id: int | None) -> dict[str, Any]:
    from studio import __version__
    from studio.versions import library_versions

    return {
        "schema_version": SCHEMA_VERSION,
        "job_id": job_id,
        "request": request.model_dump(mode="json"),
        "parents": [
            {"id": p.id, "name": p.name, "variant": p.variant, "sha256": p.sha256, "dataset_id": p.dataset_id}
            for p in parents
        ],
        "versions": {**library_versions(), "studio": __version__},
    }


# The generate job ----------------------------------------------------------------------------------


def run_generate_job(request: GenerateRequest, reporter: Reporter, ctx: Any) -> dict[str, Any]:
    """Generate an adapter for the request's dataset with its generator and register it as a ``lora`` adapter."""
    from studio.adapter_generation.generator import Generator, generate_adapter
    from studio.models.base_models import resolve_base_model
    from studio.training.job import dir_size, sha256_file

    registry = ctx.registry
    gen_row = check_generator_row(registry, request.generator_id)
    dataset = registry.get_dataset(request.dataset_id)
    rows = task_rows(registry, request.dataset_id, request.examples)
    base_path = resolve_base_model(gen_row.base_model, ctx.settings, progress=reporter.log).path
    _progress(reporter, 0.0, "computing the task vector")
    vector = BaseEncoder(base_path).vector(rows, request.examples)
    reporter.check_cancelled()
    generator = Generator.load(gen_row.path)
    if vector.numel() != generator.model.cond_dim:
        raise ValidationFailed(
            f"the task vector has {vector.numel()} values, the generator expects {generator.model.cond_dim}: "
            "was the generator trained on another base model?"
        )
    reference = generator.reference(vector)
    _progress(reporter, 0.6, "generating the adapter")
    out_dir = Path(ctx.settings.adapters_dir) / uuid.uuid4().hex
    try:
        generate_adapter(generator, vector, out_dir, seed=request.seed, reference_task=reference.task)
        source = _reference_adapter(registry, gen_row, reference.task)
        if source is not None:
            for name in TOKENIZER_FILES:
                if (Path(source.path) / name).is_file():
                    shutil.copy2(Path(source.path) / name, out_dir / name)
        record = _record(request, [gen_row], ctx.job_id) | {"reference_task": reference.task}
        (out_dir / "reproducibility.json").write_text(json.dumps(record, indent=2))
        ranks = _ranks(out_dir)
        (out_dir / "README.md").write_text(_model_card(request, gen_row, dataset, reference.task, ranks))
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    from safetensors import safe_open

    with safe_open(str(out_dir / "adapter_model.safetensors"), framework="pt") as handle:
        params = sum(_numel(handle.get_slice(k).get_shape()) for k in handle.keys())  # noqa: SIM118
    name = request.name or f"generated by #{gen_row.id} for {dataset.name or f'dataset {dataset.id}'}"
    row = registry.add_adapter(
        name=name,
        variant="lora",
        base_model=gen_row.base_model,
        dataset_id=request.dataset_id,
        ranks=ranks,
        trainable_params=params,
        size_bytes=dir_size(out_dir),
        path=str(out_dir),
        sha256=sha256_file(out_dir / "adapter_model.safetensors"),
        source_job_id=ctx.job_id,
        parents=[gen_row.id],
        metrics={},
    )
    _progress(reporter, 1.0, "done")
    reporter.log(
        f"adapter {row.id} generated to {out_dir} ({len(ranks)} modules; per-tensor scales of the nearest "
        f"training task, {reference.task})"
    )
    return {
        "adapter_id": row.id,
        "adapter_path": str(out_dir),
        "generator_id": gen_row.id,
        "reference_task": reference.task,
        "modules": len(ranks),
    }


def _numel(shape: Any) -> int:
    out = 1
    for n in shape:
        out *= int(n)
    return out


def _reference_adapter(registry: Any, gen_row: Any, task: str) -> Any:
    """The source adapter of the reference task (its tokenizer files go with the new adapter), or None."""
    from studio.errors import NotFoundError

    for parent in gen_row.parents or []:
        if task_key(int(parent)) == task:
            try:
                return registry.get_adapter(int(parent))
            except NotFoundError:
                return None
    return None


def _ranks(adapter_dir: Path) -> dict[str, int]:
    """{module: rank} of a PEFT LoRA from its lora_A shapes (module names as trained adapters store them)."""
    from safetensors import safe_open

    ranks = {}
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
            if key.endswith(".lora_A.weight"):
                module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                ranks[module] = int(handle.get_slice(key).get_shape()[0])
    return ranks


def _model_card(request: GenerateRequest, gen_row: Any, dataset: Any, task: str, ranks: dict[str, int]) -> str:
    """A short README: what made the adapter, from which examples, how to load it."""
    from studio.loading_recipes import loading_section
    from studio.services.downloads import PortableBase

    base = PortableBase.of(gen_row.base_model)
    lines = [
        f"# {request.name or 'Generated adapter'}",
        "",
        f"A plain PEFT LoRA for `{base.portable_id}`, generated without training by the ICM-LoRA generator "
        f"#{gen_row.id} ({gen_row.name}) from the first {request.examples} rows of dataset #{dataset.id} "
        f"({dataset.name}), sample seed {request.seed}.",
        "",
        f"- Per-tensor scales from the generator's training task nearest to this one: {task}",
        f"- Modules: {len(ranks)}; ranks {min(ranks.values(), default=0)}–{max(ranks.values(), default=0)}",
        "- Quality: unmeasured until evaluated; evaluate it against the bare base before relying on it.",
        "",
        *loading_section(base.portable_id, "causal-lm", max_rank=max(ranks.values(), default=0), base_note=base.note()),
    ]
    return "\n".join(lines)
