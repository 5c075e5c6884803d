"""A cache of loaded models for the playground: each base once, adapters on top, least recently used out.

A base model is loaded once and PEFT adapters are attached to it by name
(``load_adapter``), so four panes comparing three adapters cost one base model
in memory, not four. PEFT cannot hold adapters of different types (LoRA,
AdaLoRA, MiSS, ...) in one wrapper, so each type gets its own wrapper; the
first one wraps the base in place, further types a freshly loaded copy.

PEFT's active adapter is a property of the whole model, so every use of the
pool holds its lock from "switch to adapter X" to the end of generation.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.errors import StudioError

Loader = Callable[[str], tuple[Any, Any]]  # base model name -> (model, tokenizer)


@dataclass(frozen=True)
class AdapterRef:
    """An adapter to attach: a stable cache key and its PEFT directory."""

    key: str
    path: str

    def peft_type(self) -> str:
        """The ``peft_type`` of ``adapter_config.json`` (LORA for plain exports)."""
        config = Path(self.path) / "adapter_config.json"
        if not config.is_file():
            raise StudioError(f"{self.path} holds no adapter_config.json; is the adapter still on disk?")
        return str(json.loads(config.read_text()).get("peft_type", "LORA")).upper()


@dataclass
class _LoadedBase:
    model: Any  # the transformers model; wrapped in place by the first PEFT wrapper
    tokenizer: Any
    loader: Callable[[], Any]  # loads another fresh copy of the same base
    wrappers: dict[str, Any] = field(default_factory=dict)  # peft_type -> PeftModel
    in_place: str | None = None  # the peft_type whose wrapper wraps ``model`` itself
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)  # key -> peft_type, LRU order
    mask_hooks: dict[str, list[Any]] = field(default_factory=dict)  # key -> hook handles (LoRAPrune masks)


class ModelPool:
    """Loaded bases and adapters with LRU limits; thread-safe, one generation at a time."""

    def __init__(self, loader: Loader, max_adapters: int = 4, max_bases: int = 1):
        self._loader = loader
        self.max_adapters = max(1, max_adapters)
        self.max_bases = max(1, max_bases)
        self._bases: OrderedDict[str, _LoadedBase] = OrderedDict()
        # A plain Lock, not an RLock: a streaming reply is a generator that the web server may
        # advance from different threads, so the thread that releases is not always the one
        # that acquired.
        self._lock = threading.Lock()

    def loaded(self) -> dict[str, list[str]]:
        """{base name: adapter keys in least-recently-used-first order}, for tests and status."""
        with self._lock:
            return {name: list(entry.adapters) for name, entry in self._bases.items()}

    @contextmanager
    def use(self, base: str, adapter: AdapterRef | None = None) -> Iterator[tuple[Any, Any]]:
        """Hold the pool and yield ``(model, tokenizer)`` computing as ``base`` + ``adapter`` (or the bare base)."""
        with self._lock:
            entry = self._base(base)
            if adapter is None:
                wrapper = entry.wrappers.get(entry.in_place) if entry.in_place else None
                if wrapper is None:
                    yield entry.model, entry.tokenizer
                else:
                    with wrapper.disable_adapter():
                        yield wrapper, entry.tokenizer
                return
            wrapper = self._attach(entry, adapter)
            wrapper.set_adapter(adapter.key)
            yield wrapper, entry.tokenizer

    def _base(self, name: str) -> _LoadedBase:
        entry = self._bases.get(name)
        if entry is None:
            while len(self._bases) >= self.max_bases:
                self._bases.popitem(last=False)  # dropped references free the memory
            model, tokenizer = self._loader(name)
            model.eval()
            entry = _LoadedBase(model, tokenizer, loader=lambda: self._loader(name)[0])
            self._bases[name] = entry
        self._bases.move_to_end(name)
        return entry

    def _attach(self, entry: _LoadedBase, adapter: AdapterRef) -> Any:
        from studio.variants._loraprune_masks import attach_output_masks, saved_masks

        if adapter.key in entry.adapters:
            entry.adapters.move_to_end(adapter.key)
            return entry.wrappers[entry.adapters[adapter.key]]
        peft_type = adapter.peft_type()
        wrapper = entry.wrappers.get(peft_type)
        if wrapper is None:
            from peft import PeftModel

            in_place = entry.in_place is None
            target = entry.model if in_place else entry.loader()
            wrapper = PeftModel.from_pretrained(target, adapter.path, adapter_name=adapter.key, is_trainable=False)
            wrapper.eval()
            entry.wrappers[peft_type] = wrapper
            if in_place:
                entry.in_place = peft_type
        else:
            wrapper.load_adapter(adapter.path, adapter_name=adapter.key, is_trainable=False)
        entry.adapters[adapter.key] = peft_type
        masks = saved_masks(adapter.path)
        if masks is not None:  # LoRAPrune: zero its pruned rows only while it is the active adapter
            entry.mask_hooks[adapter.key] = attach_output_masks(wrapper, adapter.key, masks)
        while len(entry.adapters) > self.max_adapters:
            self._evict(entry, next(iter(entry.adapters)))
        return wrapper

    def _evict(self, entry: _LoadedBase, key: str) -> None:
        peft_type = entry.adapters.pop(key)
        for handle in entry.mask_hooks.pop(key, []):
            handle.remove()
        wrapper = entry.wrappers[peft_type]
        if any(t == peft_type for t in entry.adapters.values()):
            wrapper.delete_adapter(key)
            return
        # Last adapter of this wrapper: drop the wrapper (restoring the plain base when it was in place).
        del entry.wrappers[peft_type]
        if entry.in_place == peft_type:
            entry.model = wrapper.unload()
            entry.in_place = None
