"""Load what an evaluation scores: a base model with a PEFT adapter on top, or the bare base.

The base is built exactly as training builds it (``studio.training.models``), so
a classification adapter finds the same head shape and label order it was trained
with; the adapter is then applied with ``PeftModel.from_pretrained``, which restores
the trained head from ``modules_to_save``. Only safetensors adapters are loaded:
a pickle (``adapter_model.bin``) can run code on load and is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import StudioError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
HEAD_NAMES = ("score", "classifier")
# JSON files of an adapter directory that never hold the label list.
NOT_METADATA = ("adapter_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

Log = Callable[[str], None]


@dataclass
class EvalModel:
    """A model ready for scoring, with what the scorer needs to know about it."""

    model: Any
    tokenizer: Any
    task: str  # "causal-lm" | "classification"
    labels: list[Any] | None  # class names in head order (classification only)
    pad_id: int
    description: str  # "adapter 3 (lora on smollm2-135m-instruct)" / "base model X"
    base_model: str = ""  # the base's name as the registry knows it
    window_pooling: str = "mean"  # how windows' logits make a sequence's (as the adapter was trained)


def adapter_task(adapter_dir: Path) -> str:
    """The task an adapter was trained for, from its PEFT config's ``task_type``."""
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    return "classification" if config.get("task_type") == "SEQ_CLS" else "causal-lm"


def check_adapter_dir(adapter_dir: Path, adapter_id: int) -> None:
    """A readable PEFT directory with safetensors weights, or a StudioError saying what is wrong."""
    if not adapter_dir.is_dir():
        raise StudioError(f"adapter {adapter_id}: its directory {adapter_dir} is missing; was it deleted?")
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise StudioError(f"adapter {adapter_id}: {adapter_dir} holds no {ADAPTER_CONFIG}; it is not a PEFT adapter")
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        pickles = [p.name for p in adapter_dir.iterdir() if p.suffix in PICKLE_SUFFIXES]
        extra = f" (found {', '.join(pickles)}: pickled weights are never loaded)" if pickles else ""
        raise StudioError(f"adapter {adapter_id}: {adapter_dir} holds no {ADAPTER_WEIGHTS}{extra}")


def saved_labels(adapter_dir: Path) -> list[Any] | None:
    """The label list stored next to an adapter: the studio's ``labels.json`` (a plain list in head order, as
    training writes it), else ``labels`` or ``id2label`` in any metadata JSON."""
    own = adapter_dir / "labels.json"
    try:
        listed = json.loads(own.read_text()) if own.is_file() and own.stat().st_size <= 1_000_000 else None
    except (OSError, ValueError):
        listed = None
    if isinstance(listed, list) and len(listed) >= 2:
        return listed
    for path in sorted(adapter_dir.glob("*.json")):
        if path.name in NOT_METADATA or path.stat().st_size > 1_000_000:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        if isinstance(data.get("labels"), list) and len(data["labels"]) >= 2:
            return list(data["labels"])
        id2label = data.get("id2label")
        if isinstance(id2label, dict) and len(id2label) >= 2:
            return [id2label[k] for k in sorted(id2label, key=int)]
    return None


def head_size(adapter_dir: Path) -> int | None:
    """Output size of the classification head saved in the adapter (None when there is none)."""
    from safetensors import safe_open

    from studio.sequences.pooling import TOKEN_POOLER

    sizes = {}
    with safe_open(str(adapter_dir / ADAPTER_WEIGHTS), "pt") as handle:
        names = handle.keys()  # safe_open is not iterable: the key list is asked for
        for key in names:
            if not key.endswith("weight") or not any(f".{head}." in f".{key}" for head in HEAD_NAMES):
                continue
            if f".{TOKEN_POOLER}." in key:  # attention pooling's weights ride in the head; not its output layer
                continue
            shape = handle.get_slice(key).get_shape()
            if len(shape) == 2:
                sizes[key] = shape[0]
    # RoBERTa-style heads are dense -> out_proj: the last weight (by name) is the output layer.
    return sizes[sorted(sizes)[-1]] if sizes else None


def _tokenizer(base_path: Path, adapter_dir: Path | None) -> Any:
    from studio.training.models import load_tokenizer_for

    # Prefer a tokenizer saved with the adapter: it carries the chat template training used.
    if adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file():
        return load_tokenizer_for(adapter_dir)
    return load_tokenizer_for(base_path)


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def load_adapter(
    adapter: Any,
    settings: Any,
    device: str,
    fallback_labels: Sequence[Any] | None,
    log: Log,
) -> EvalModel:
    """Base + adapter (an AdapterRow) on ``device`` in eval mode.

    For a classification adapter the label order comes from metadata saved with
    it, else ``fallback_labels`` (its training dataset's labels, else the eval
    dataset's); their count must match the saved head.
    """
    from peft import PeftModel

    from studio.models.base_models import resolve_base_model
    from studio.training.models import load_base_model
    from studio.variants._loraprune_masks import saved_masks, zero_pruned_rows

    adapter_dir = Path(adapter.path)
    if adapter.variant == "mixture":
        return load_mixture(adapter, settings, device, log)
    check_adapter_dir(adapter_dir, adapter.id)
    task = adapter_task(adapter_dir)
    base_path = resolve_base_model(adapter.base_model, settings, progress=log).path
    tokenizer = _tokenizer(base_path, adapter_dir)
    pad_id = _pad_id(tokenizer)
    labels = None
    if task == "classification":
        labels = saved_labels(adapter_dir) or (list(fallback_labels) if fallback_labels else None)
        size = head_size(adapter_dir)
        if labels is None or (size is not None and size != len(labels)):
            known = f"{len(labels)} labels {labels}" if labels else "no label list"
            raise StudioError(
                f"adapter {adapter.id} has a {size}-class head but the studio found {known}; "
                "evaluate it on a dataset with the labels it was trained on"
            )
    base = load_base_model(base_path, task, labels, pad_id)
    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir))
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudioError(f"adapter {adapter.id} does not fit base model {adapter.base_model}: {first}") from None
    masks = saved_masks(adapter_dir)
    if masks is not None:  # LoRAPrune: the LoRA alone is the unpruned model; this base is ours to zero
        zero_pruned_rows(model, masks)
    model.to(device).eval()
    description = f"adapter {adapter.id} ({adapter.variant} on {adapter.base_model})"
    from studio.sequences.windows import saved_pooling

    pooling = saved_pooling(adapter_dir)
    return EvalModel(model, tokenizer, task, labels, pad_id, description, adapter.base_model, pooling)


def load_mixture(adapter: Any, settings: Any, device: str, log: Log) -> EvalModel:
    """A MeteoRA mixture (registry variant ``mixture``) on a fresh base, scored like any causal-LM adapter.

    Experts are read from the paths stored in the bundle (a mixture is no PEFT directory,
    so it never goes on the pooled PEFT base).
    """
    from studio.composition.meteora_bundle import load_bundle
    from studio.models.base_models import resolve_base_model
    from studio.training.models import load_base_model

    adapter_dir = Path(adapter.path)
    base_path = resolve_base_model(adapter.base_model, settings, progress=log).path
    tokenizer = _tokenizer(base_path, adapter_dir)  # the experts' chat template, copied into the bundle
    pad_id = _pad_id(tokenizer)
    mixture = load_bundle(load_base_model(base_path, "causal-lm", None, pad_id), adapter_dir)
    mixture.to(device).eval()
    description = f"adapter {adapter.id} (mixture on {adapter.base_model})"
    return EvalModel(mixture, tokenizer, "causal-lm", None, pad_id, description, adapter.base_model)


def load_base(name: str, settings: Any, device: str, task: str, log: Log) -> EvalModel:
    """The bare base model for ``task``; classification needs a base that already has a trained head."""
    from studio.models.base_models import resolve_base_model
    from studio.training.models import load_base_model

    base_path = resolve_base_model(name, settings, progress=log).path
    tokenizer = _tokenizer(base_path, None)
    pad_id = _pad_id(tokenizer)
    if task == "classification":
        model, labels = _base_classifier(base_path, name)
    else:
        model, labels = load_base_model(base_path, "causal-lm"), None
    model.to(device).eval()
    return EvalModel(model, tokenizer, task, labels, pad_id, f"base model {name}", name)


def _base_classifier(base_path: Path, name: str) -> tuple[Any, list[Any]]:
    import torch
    from transformers import AutoModelForSequenceClassification

    from studio.sequences.pooling import apply_classifier_pooling

    config = json.loads((Path(base_path) / "config.json").read_text())
    architectures = config.get("architectures") or []
    id2label = config.get("id2label") or {}
    if not any(a.endswith("ForSequenceClassification") for a in architectures) or len(id2label) < 2:
        # A freshly initialised head scores chance: a number that would only mislead.
        raise StudioError(
            f"base model {name} has no trained classification head, so its accuracy would be chance; "
            "evaluate a classification adapter trained on it instead"
        )
    model = AutoModelForSequenceClassification.from_pretrained(str(base_path), dtype=torch.float32)
    apply_classifier_pooling(model, base_path)
    names = [id2label[k] for k in sorted(id2label, key=int)]
    if names == [f"LABEL_{i}" for i in range(len(names))]:
        names = list(range(len(names)))  # transformers' placeholder names: datasets label by index
    return model, names


class ComparisonLoader:
    """Loads the models of one comparison: a causal-LM base once, each adapter swapped onto it.

    The base sits in a :class:`~studio.serving.pool.ModelPool` (the playground's), holding one
    adapter at a time, so comparing five adapters costs one base model's load and memory.
    Classification adapters each carry their own head and label order, so they are loaded
    whole, one after the other, as a single evaluation loads them.
    """

    def __init__(self, settings: Any, device: str, log: Log):
        from studio.serving.pool import ModelPool

        self.settings, self.device, self.log = settings, device, log
        self._bases: dict[str, EvalModel] = {}
        self._pool = ModelPool(self._load_base, max_adapters=1)

    def _load_base(self, name: str) -> tuple[Any, Any]:
        base = load_base(name, self.settings, self.device, "causal-lm", self.log)
        self._bases[name] = base
        return base.model, base.tokenizer

    @contextmanager
    def base(self, name: str, task: str) -> Iterator[EvalModel]:
        """The bare base model for ``task``, reusing the pooled one for text generation."""
        if task == "classification":
            yield load_base(name, self.settings, self.device, task, self.log)
            return
        with self._pool.use(name) as (model, tokenizer):
            loaded = self._bases[name]
            yield EvalModel(model, tokenizer, "causal-lm", None, loaded.pad_id, loaded.description, name)

    @contextmanager
    def adapter(self, adapter: Any, fallback_labels: Sequence[Any] | None) -> Iterator[EvalModel]:
        """Base + ``adapter`` (an AdapterRow), swapped onto the pooled base unless it is a classifier."""
        from studio.models.base_models import resolve_base_model
        from studio.serving.pool import AdapterRef

        adapter_dir = Path(adapter.path)
        if adapter.variant == "mixture":  # not a PEFT adapter: its own wrapped copy of the base
            yield load_mixture(adapter, self.settings, self.device, self.log)
            return
        check_adapter_dir(adapter_dir, adapter.id)
        if adapter_task(adapter_dir) == "classification":
            yield load_adapter(adapter, self.settings, self.device, fallback_labels, self.log)
            return
        base_path = resolve_base_model(adapter.base_model, self.settings, progress=self.log).path
        tokenizer = _tokenizer(base_path, adapter_dir)  # the adapter's own chat template, when it saved one
        with ExitStack() as stack:
            ref = AdapterRef(f"adapter-{adapter.id}", str(adapter_dir))
            try:
                model, _ = stack.enter_context(self._pool.use(adapter.base_model, ref))
            except (RuntimeError, ValueError, KeyError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise StudioError(
                    f"adapter {adapter.id} does not fit base model {adapter.base_model}: {first}"
                ) from None
            description = f"adapter {adapter.id} ({adapter.variant} on {adapter.base_model})"
            yield EvalModel(model, tokenizer, "causal-lm", None, _pad_id(tokenizer), description, adapter.base_model)
