"""Adapters: list, inspect, export (as is, as a plain LoRA at a chosen rank, merged into the base, or pruned), zip,
delete.

Only ``adapter_model.safetensors`` is ever loaded from an adapter directory; a
directory holding pickled weights only is refused.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

from studio.errors import NotFoundError, StudioError, ValidationFailed
from studio.schema import AdapterFilters
from studio.services.downloads import PortableBase, portable_files, write_archive, write_portable
from studio.variants.base import ExportReport

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


# Bundles without a PEFT config at the top: mixtures (MeteoRA) and personalised (RecLoRA) adapters, all text generators.
_TEXT_BUNDLES = ("mixture.json", "reclora.json")
# Directory -> task. An adapter's files never change once registered, so each is read once per process
# (the Adapters tab asks for up to a thousand on every refresh). An unreadable one is not kept: it may come back.
_TASKS: dict[str, str] = {}


def task_of_dir(path: str | Path) -> str | None:
    """The task an adapter directory was trained for: "classification" (a PEFT ``SEQ_CLS`` config), "causal-lm",
    or None when its files are missing or unreadable."""
    key = str(path)
    if key in _TASKS:
        return _TASKS[key]
    directory = Path(path)
    try:
        config = json.loads((directory / CONFIG).read_text())
        task = "classification" if config.get("task_type") == "SEQ_CLS" else "causal-lm"
    except FileNotFoundError:
        if not any((directory / name).is_file() for name in _TEXT_BUNDLES):
            return None
        task = "causal-lm"
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, or JSON that is not an object
        return None
    _TASKS[key] = task
    return task


class AdapterService:
    """What the UI, API and CLI do with adapters; all database access goes through the registry."""

    def __init__(self, registry: Any, settings: Any):
        self.registry = registry
        self.settings = settings

    def list(self, variant: str | None = None, base_model: str | None = None) -> list[Any]:
        """Adapters, newest first, optionally filtered by variant and base model."""
        return self.registry.list_adapters(variant=variant, base_model=base_model)

    def page(
        self,
        filters: AdapterFilters | None = None,
        search: str | None = None,
        sort: str = "newest",
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[Any], int]:
        """One page of adapters (filtered, searched and sorted by the database) and how many match."""
        return self.registry.page_adapters(filters, search, sort, offset, limit)

    def view(
        self,
        filters: AdapterFilters | None = None,
        search: str | None = None,
        sort: str = "newest",
        offset: int = 0,
        limit: int = 50,
        scatter_metric: str = "eval_loss",
        max_points: int = 1000,
    ) -> Any:
        """A page and the scatter sample of ``scatter_metric`` together (the search runs once): an AdapterView."""
        return self.registry.adapter_view(filters, search, sort, offset, limit, scatter_metric, max_points)

    def filter_choices(self) -> dict[str, list[Any]]:
        """The distinct variants, base models, dataset ids and metric names the adapters have."""
        return self.registry.adapter_filter_choices()

    def scatter(
        self, metric: str, filters: AdapterFilters | None = None, search: str | None = None, max_points: int = 1000
    ) -> tuple[list[tuple[int, str, str, int, float]], int]:
        """A sample of at most ``max_points`` ``(id, name, variant, params, value)`` having ``metric``, and how many have it."""
        return self.registry.adapter_scatter(metric, filters, search, max_points)

    def tasks(self, adapter_ids: list[int]) -> dict[int, str | None]:
        """``{id: "causal-lm" | "classification" | None}`` of the existing ones of ``adapter_ids`` (None: unknown).

        Read from each adapter's own files (the database does not store the task); see :func:`task_of_dir`.
        """
        return {i: task_of_dir(path) for i, path in self.registry.adapter_paths(adapter_ids).items()}

    def get(self, adapter_id: int) -> Any:
        return self.registry.get_adapter(adapter_id)

    def eval_results(self, adapter_id: int) -> list[Any]:
        """The adapter's stored evaluation scores (per dataset and metric), apart from its training metrics."""
        return self.registry.eval_results(adapter_id=adapter_id)

    def rank_history(self, adapter_id: int) -> list[Any]:
        """Rank snapshots (step, module, rank) recorded while the adapter's job trained."""
        row = self.get(adapter_id)
        return self.registry.rank_snapshots(row.source_job_id) if row.source_job_id else []

    def path(self, adapter_id: int) -> Path:
        """The adapter's directory, checked to hold a safetensors PEFT checkpoint."""
        row = self.get(adapter_id)
        path = Path(row.path)
        if not (path / CONFIG).exists():
            raise NotFoundError(f"the files of adapter {adapter_id} are missing from {path}")
        if not (path / WEIGHTS).exists():
            raise ValidationFailed(f"adapter {adapter_id} has no {WEIGHTS}; only safetensors adapters are loaded")
        return path

    def export(self, adapter_id: int, out_dir: str | Path, as_lora_rank: int | None = None) -> ExportReport:
        """Copy the adapter to ``out_dir``, or (``as_lora_rank``) write it as a plain LoRA of that rank.

        A plain-LoRA export factorises each module's ΔW by SVD; the relative Frobenius
        error per module (and the maximum) is reported and written to export_report.json.
        DyLoRA adapters are cut to the rank exactly instead (they are trained for every rank).
        """
        source = self.path(adapter_id)
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()):
            raise ValidationFailed(f"{out} is not empty; choose a new directory for the export")
        row = self.get(adapter_id)
        if as_lora_rank is None:
            from studio.serving.servable import is_served_copy

            # Leave out the serving engine's cached plain-LoRA copies (served_lora_*/): they are this server's.
            def ignore(directory: str, names: list[str]) -> list[str]:
                return [n for n in names if Path(directory) == source and is_served_copy(n)]

            shutil.copytree(source, out, dirs_exist_ok=True, ignore=ignore)
            report = ExportReport(path=str(out), ranks=dict(row.ranks or {}), format="copy")
        elif as_lora_rank < 1:
            raise ValidationFailed("the export rank must be at least 1")
        elif row.variant == "dylora":
            from studio.variants.dylora import cut_saved_adapter

            # Exact as DyLoRA's own model at that rank, yet it still changes the outputs: measure by how much.
            report = cut_saved_adapter(source, out, as_lora_rank)
            report = self._measure_output_error(adapter_id, source, out, report)
        else:
            report = self._export_as_lora(adapter_id, source, out, as_lora_rank)
        # An export is meant for use elsewhere: it names its base portably, never by a path of this server.
        write_portable(out, PortableBase.for_download(row.base_model, self.registry), row.name)
        return report

    def _export_as_lora(self, adapter_id: int, source: Path, out: Path, rank: int) -> ExportReport:
        from peft import PeftModel

        from studio.variants._loraprune_masks import load_pruned_adapter, masked_deltas, saved_masks
        from studio.variants.lora_export import export_delta_as_lora
        from studio.variants.peft_common import layer_delta, tuner_layers

        ectx = self._export_context(adapter_id, source)
        model = PeftModel.from_pretrained(ectx.fresh_base(), str(source), use_safetensors=True)
        deltas = {name: layer_delta(layer, model.active_adapter) for name, layer in tuner_layers(model).items()}
        masks = saved_masks(source)
        if masks is not None:  # LoRAPrune: the LoRA alone is the unpruned model; fold the pruned rows in
            deltas = masked_deltas(model, deltas, masks)
        if not deltas:
            raise StudioError(f"adapter {adapter_id} has no low-rank layers to export")
        out.mkdir(parents=True, exist_ok=True)
        report = export_delta_as_lora(model, out, ectx, deltas=deltas, rank=rank)
        for extra in ("labels.json",):
            if (source / extra).exists():
                shutil.copy2(source / extra, out / extra)
        # Measured against what was trained: a LoRAPrune adapter's reference has its masks applied.
        reference = load_pruned_adapter(ectx.fresh_base(), source, merge=False) if masks is not None else model
        return self._measure_output_error(adapter_id, source, out, report, reference)

    def _measure_output_error(
        self, adapter_id: int, source: Path, out: Path, report: ExportReport, reference: Any = None
    ) -> ExportReport:
        """Set ``report.output_error``: the share of the adapter's effect on logits that the export in ``out`` changes.

        ``reference`` is the adapter as trained (default: plain PEFT on ``source``); the report is rewritten.
        """
        from peft import PeftModel

        from studio.variants.lora_export import output_change

        ectx = self._export_context(adapter_id, source)
        if reference is None:
            reference = PeftModel.from_pretrained(ectx.fresh_base(), str(source), use_safetensors=True)
        exported = PeftModel.from_pretrained(ectx.fresh_base(), str(out), use_safetensors=True)
        report.output_error = output_change(reference, exported, ectx.fresh_base(), self._probe_ids(adapter_id))
        report.write(out)
        return report

    def _probe_ids(self, adapter_id: int) -> Any:
        """A fixed batch of token ids of ordinary text, for measuring what an export changes in the outputs."""
        import torch

        from studio.training.models import load_tokenizer_for
        from studio.variants.lora_export import PROBE_TEXTS

        tokenizer = load_tokenizer_for(self._base_path(adapter_id))
        rows = [tokenizer(text, add_special_tokens=False)["input_ids"][:48] for text in PROBE_TEXTS]
        width = min(len(r) for r in rows)  # equal lengths: no padding, no attention mask to get wrong
        return torch.tensor([r[:width] for r in rows])

    def export_merged_model(self, adapter_id: int, out_dir: str | Path) -> Path:
        """Write the base model with the adapter folded into its weights: a standalone transformers model.

        For tools that take a whole model rather than base + adapter (llama.cpp converters,
        serving stacks without PEFT). Weights are fp32 safetensors, with the tokenizer the
        adapter was trained with; a LoRAPrune adapter's pruned rows are zeroed as its loader does.
        """
        from peft import PeftModel

        from studio.training.models import load_tokenizer_for
        from studio.variants._loraprune_masks import load_pruned_adapter, masks_path

        source = self.path(adapter_id)
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()):
            raise ValidationFailed(f"{out} is not empty; choose a new directory for the merged model")
        ectx = self._export_context(adapter_id, source)
        base = ectx.fresh_base()
        if masks_path(source) is not None:
            model = load_pruned_adapter(base, source, merge=True)
        else:
            model = PeftModel.from_pretrained(base, str(source), use_safetensors=True).merge_and_unload()
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out), safe_serialization=True)
        tokenizer_dir = source if (source / "tokenizer_config.json").exists() else self._base_path(adapter_id)
        load_tokenizer_for(tokenizer_dir).save_pretrained(str(out))
        if (source / "labels.json").exists():
            shutil.copy2(source / "labels.json", out / "labels.json")
        row = self.get(adapter_id)
        (out / "MERGED_FROM.md").write_text(
            f"# {row.name}\n\n`{PortableBase.of(row.base_model).portable_id}` with adapter #{row.id} ({row.variant}) merged into its weights "
            "by Adapter Studio. Load it with `AutoModelForCausalLM.from_pretrained(this_dir)` (classifiers: "
            "`AutoModelForSequenceClassification`); no PEFT needed.\n",
            encoding="utf-8",
        )
        return out

    def merged_model_zip(self, adapter_id: int) -> Path:
        """A zip of :meth:`export_merged_model` for download (stored, not compressed: weights barely shrink)."""
        return self._model_zip(adapter_id, "merged-model", self.export_merged_model)

    def _model_zip(self, adapter_id: int, kind: str, export: Any) -> Path:
        """Write ``export(adapter_id, folder)`` into a scratch folder and zip it as ``<kind>-<id>.zip``."""
        work = Path(self.settings.data_dir) / "exports" / f"{kind}-{adapter_id}"
        if work.exists():
            shutil.rmtree(work)
        export(adapter_id, work)
        try:
            return _zip_folder(work, f"{kind}-{adapter_id}", zipfile.ZIP_STORED)
        finally:
            shutil.rmtree(work)

    def export_pruned_model(self, adapter_id: int, out_dir: str | Path) -> Path:
        """Write a LoRAPrune adapter's physically pruned model: the LoRA merged in, pruned heads and channels removed.

        Smaller and faster than the base; loads with transformers' ``from_pretrained``
        (``trust_remote_code=True`` when layers keep different widths; see its README.md).
        """
        from studio.training.models import load_tokenizer_for
        from studio.variants._loraprune_masks import load_pruned_adapter, saved_masks
        from studio.variants._loraprune_pruned import save_pruned_model

        source = self.path(adapter_id)
        masks = saved_masks(source)
        if masks is None:
            raise ValidationFailed(
                f"adapter {adapter_id} has no pruning masks; only LoRAPrune adapters have a pruned model "
                "(use the merged-model export for the others)"
            )
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()):
            raise ValidationFailed(f"{out} is not empty; choose a new directory for the pruned model")
        ectx = self._export_context(adapter_id, source)
        model = load_pruned_adapter(ectx.fresh_base(), source, merge=True)
        save_pruned_model(model, masks, out, ectx.task)
        tokenizer_dir = source if (source / "tokenizer_config.json").exists() else self._base_path(adapter_id)
        load_tokenizer_for(tokenizer_dir).save_pretrained(str(out))
        if (source / "labels.json").exists():
            shutil.copy2(source / "labels.json", out / "labels.json")
        return out

    def pruned_model_zip(self, adapter_id: int) -> Path:
        """A zip of :meth:`export_pruned_model` for download (stored, not compressed)."""
        return self._model_zip(adapter_id, "pruned-model", self.export_pruned_model)

    def _base_path(self, adapter_id: int) -> Path:
        from studio.models.base_models import resolve_base_model

        return resolve_base_model(self.get(adapter_id).base_model, self.settings).path

    def _export_context(self, adapter_id: int, source: Path):
        from studio.models.base_models import resolve_base_model
        from studio.training.models import load_base_model, load_tokenizer_for
        from studio.variants.base import ExportContext

        row = self.get(adapter_id)
        config = json.loads((source / CONFIG).read_text())
        task = "classification" if config.get("task_type") == "SEQ_CLS" else "causal-lm"
        labels = json.loads((source / "labels.json").read_text()) if (source / "labels.json").exists() else None
        base_path = resolve_base_model(row.base_model, self.settings).path
        pad_id = load_tokenizer_for(base_path).pad_token_id if task == "classification" else None
        # Every fully trained module travels with an export: heads, and e.g. SoRA's norms.
        # Names that match nothing in the model (PEFT lists both `classifier` and `score`) are skipped on export.
        return ExportContext(
            fresh_base=lambda: load_base_model(base_path, task, labels, pad_id),
            task=task,
            modules_to_save=list(config.get("modules_to_save") or []),
        )

    def zip(self, adapter_id: int) -> Path:
        """A zip of the adapter directory for download (rebuilt on every call).

        Its ``adapter_config.json`` names the base by its portable id, its README ends with
        how to load it with PEFT, transformers and vLLM, and ``SHA256SUMS`` lists every file;
        an encoder pre-trained on this studio (small enough) ships in ``base_model/``;
        ``<zip>.sha256`` beside it holds the zip's own checksum (:func:`archive_sha256`).
        """
        source = self.path(adapter_id)
        row = self.get(adapter_id)
        target_dir = Path(self.settings.data_dir) / "exports"
        target_dir.mkdir(parents=True, exist_ok=True)
        name = f"adapter-{adapter_id}"
        # An encoder pre-trained on this studio is on no hub: a small one travels inside, in base_model/.
        base = PortableBase.for_download(row.base_model, self.registry)
        replaced = portable_files(source, base, name, row.name)
        from studio.serving.servable import is_served_copy

        # The serving engine's cached plain-LoRA copies (served_lora_*/) are this server's, not the adapter's.
        return write_archive(
            source,
            name,
            target_dir / f"{name}.zip",
            zipfile.ZIP_DEFLATED,
            replaced,
            skip_top=is_served_copy,
            extra=base.files(),
        )

    def delete(self, adapter_id: int) -> None:
        """Remove the adapter's files (when inside the studio's adapters dir) and its registry row."""
        row = self.get(adapter_id)
        path = Path(row.path)
        root = Path(self.settings.adapters_dir).resolve()
        if path.exists() and root in path.resolve().parents:
            shutil.rmtree(path)
        self.registry.delete_adapter(adapter_id)


def _zip_folder(folder: Path, name: str, compression: int) -> Path:
    """Zip a whole exported model folder as ``<name>.zip`` beside it (with SHA256SUMS and a .sha256 file)."""
    return write_archive(folder, name, folder.with_name(f"{name}.zip"), compression)
