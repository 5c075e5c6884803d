"""Chatting with a MeteoRA mixture: replies generated on a loaded :class:`MeteoRAModel`, one at a time.

The serving engine's adapter banks give each *request* one adapter; a mixture routes every
*token* (in every layer) to its own experts, which those banks cannot express. So a mixture is
answered here, like the PEFT pool answers adapters the engine refuses
(:mod:`studio.services.playground`): the bundle is loaded on a fresh copy of its base
(:func:`~studio.composition.meteora_bundle.load_bundle`, experts found through the registry
by adapter id), kept in a small LRU cache (``size`` bundles, default 1: each holds a copy of
the base), and generates one reply at a time under a lock. **Not batched**: concurrent
mixture requests wait for each other, and never join the engine's batch.

:class:`MixtureScheduler` has the scheduler's shape (``engine.tokenizer``, ``engine.model``,
``submit(request) -> RequestHandle`` whose updates are :class:`~studio.serving.scheduler.Update`),
so the /v1 API streams from a mixture with the code it uses for the engine. Sampling, stop
strings and finish reasons are the engine's own (its per-row sampling methods are reused).
"""

from __future__ import annotations

import inspect
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.composition.meteora import ExpertRef
from studio.serving.engine import EngineRequest, EngineResult, ServingEngine
from studio.serving.generation import GenerationSettings, stream_reply
from studio.serving.scheduler import RequestHandle, _Ticket

# (model, tokenizer) of a fresh base copy, by base model name.
BaseLoader = Callable[[str], tuple[Any, Any]]
Resolver = Callable[[ExpertRef], str | Path]


class MixturePool:
    """Loaded mixtures by bundle directory (an LRU of ``size``), used one reply at a time."""

    def __init__(self, load_base: BaseLoader, resolve: Resolver | None = None, size: int = 1):
        self._load_base = load_base
        self._resolve = resolve
        self._size = max(1, size)
        self._loaded: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()  # one generation (and one load) at a time

    def loaded(self) -> list[str]:
        """Bundle directories in memory, least recently used first."""
        return list(self._loaded)

    def _get(self, base_model: str, bundle_dir: str) -> tuple[Any, Any]:
        key = str(bundle_dir)
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        from studio.composition.meteora_bundle import load_bundle

        while len(self._loaded) >= self._size:  # free the old copy of the base before loading a new one
            self._loaded.popitem(last=False)
        model, tokenizer = self._load_base(base_model)
        mixture = load_bundle(model, key, self._resolve).eval()
        self._loaded[key] = (mixture, tokenizer)
        return self._loaded[key]

    def peek(self, base_model: str, bundle_dir: str) -> tuple[Any, Any]:
        """(mixture, tokenizer), loaded if needed; for reading the tokenizer and config, not for generating."""
        with self._lock:
            return self._get(base_model, bundle_dir)

    @contextmanager
    def use(self, base_model: str, bundle_dir: str) -> Iterator[tuple[Any, Any]]:
        """Hold the pool for one reply: (mixture, tokenizer) of ``bundle_dir``."""
        with self._lock:
            yield self._get(base_model, bundle_dir)

    def stream(
        self, base_model: str, bundle_dir: str, messages: list[dict[str, str]], settings: GenerationSettings
    ) -> Iterator[str]:
        """The playground's reply (full text so far each time), from ``model.generate`` like the PEFT pool's."""
        with self.use(base_model, bundle_dir) as (mixture, tokenizer):
            yield from stream_reply(mixture, tokenizer, messages, settings)


@dataclass
class _EngineView:
    """What the /v1 code reads from ``scheduler.engine``: the model (its config) and the tokenizer."""

    model: Any
    tokenizer: Any


class _Decoder:
    """The engine's per-row sampling and stopping rules (``ServingEngine._row/_next_token/_append``) on a mixture."""

    _row = ServingEngine._row
    _next_token = ServingEngine._next_token
    _append = ServingEngine._append
    _eos_ids = ServingEngine._eos_ids

    def __init__(self, model: Any, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer
        self._eos = self._eos_ids()
        inner = getattr(model, "model", model)  # MeteoRAModel wraps the transformers model
        self._cache_arg = "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


class MixtureScheduler:
    """The scheduler's interface for one mixture bundle: ``submit`` runs a request in a thread, one at a time."""

    _numbers = itertools.count(1)

    def __init__(self, pool: MixturePool, base_model: str, bundle_dir: str):
        self.pool = pool
        self.base_model = base_model
        self.bundle_dir = bundle_dir

    @property
    def engine(self) -> _EngineView:
        return _EngineView(*self.pool.peek(self.base_model, self.bundle_dir))

    def _wake(self) -> None:  # RequestHandle.cancel calls it; the decode loop polls the ticket instead
        pass

    def submit(self, request: EngineRequest) -> RequestHandle:
        ticket = _Ticket(next(self._numbers), request)
        thread = threading.Thread(target=self._run, args=(ticket,), name="mixture-generate", daemon=True)
        thread.start()
        return RequestHandle(ticket, self)

    def _run(self, ticket: _Ticket) -> None:
        try:
            with self.pool.use(self.base_model, self.bundle_dir) as (mixture, tokenizer):
                ticket.finish(generate(mixture, tokenizer, ticket))
        except BaseException as exc:  # the handle raises it to its reader
            ticket.fail(exc)


def generate(mixture: Any, tokenizer: Any, ticket: _Ticket) -> EngineResult:
    """Decode ``ticket.request`` on ``mixture`` token by token (KV cache), sending updates to the ticket."""
    import torch

    decoder = _Decoder(mixture, tokenizer)
    row = decoder._row(0, ticket.request)
    device = next(mixture.parameters()).device
    inputs = torch.tensor([row.prompt], dtype=torch.long, device=device)
    cache = None
    with torch.no_grad():
        while row.finish is None:
            if ticket.cancelled.is_set():
                row.finish = "cancelled"
                break
            out = mixture(input_ids=inputs, use_cache=True, **({decoder._cache_arg: cache} if cache else {}))
            cache = out.past_key_values
            decoder._append(row, decoder._next_token(row, out.logits[0, -1].float()))
            if row.finish is None:
                ticket.progress(row.text, len(row.generated))
            inputs = torch.tensor([[row.generated[-1]]], dtype=torch.long, device=device) if row.generated else inputs
    return EngineResult(list(row.generated), row.text, row.finish)  # type: ignore[arg-type]
