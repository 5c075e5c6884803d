"""PlaygroundService: chat with a base model and its adapters, side by side, streamed.

The UI names what each pane talks to as a *target*: ``"base"`` or
``"adapter:<id>"``. Every pane whose target the batched engine can serve (the
bare base and plain LoRA adapters) is submitted at the same moment to the base
model's :class:`~studio.serving.scheduler.Scheduler`, so all panes are
prefilled and decoded in one batch and their replies stream side by side.

Adapters the engine refuses (:class:`~studio.serving.bank.AdapterNotServable`:
DoRA, ``modules_to_save``, AdaLoRA and the other PEFT types) are answered by
PEFT itself through a :class:`~studio.serving.pool.ModelPool`, the reason
logged once. They are not converted to a plain LoRA for the engine: DoRA and
``modules_to_save`` have no exact plain-LoRA form, and for the types that do
(AdaLoRA...) the conversion loads the adapter in PEFT and factorises every
layer by SVD, which costs more than answering with PEFT. Both the scheduler and
the pool are per service instance, so per web process; the pool (a second copy
of the base) is loaded only when such an adapter is asked for.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

from models_db.registry import Registry
from studio.errors import StudioError, ValidationFailed
from studio.schema import AdapterFilters
from studio.serving.bank import AdapterNotServable
from studio.serving.engine import EngineRequest, ServingEngine
from studio.serving.generation import GenerationSettings, stream_reply
from studio.serving.pool import AdapterRef, ModelPool
from studio.serving.scheduler import RequestHandle, Schedulers
from studio.settings import Settings

logger = logging.getLogger(__name__)

BASE_TARGET = "base"


@dataclass(frozen=True)
class PaneReply:
    """One step of one pane's reply: the pane's index, its text so far, and whether it is complete."""

    pane: int
    text: str
    done: bool = False


@dataclass(frozen=True)
class Target:
    """One thing a pane can chat with."""

    value: str  # "base" or "adapter:<id>"
    label: str


class PlaygroundService:
    """Chat targets of a base model, and streamed replies from them."""

    def __init__(self, registry: Registry, settings: Settings, pool: ModelPool | None = None, max_adapters: int = 4):
        self.registry = registry
        self.settings = settings
        self.pool = pool or ModelPool(self._load_base, max_adapters=max_adapters)  # adapters the engine refuses
        self.schedulers = Schedulers(self._load_engine, queue_size=settings.serving_queue)
        self._peft_only: dict[str, str] = {}  # adapter key -> why the engine refused it

    def _load_engine(self, name: str) -> ServingEngine:
        model, tokenizer = self._load_base(name)
        return ServingEngine(model, tokenizer, slots=self.settings.serving_slots)

    def _load_base(self, name: str):
        from studio.device import detect_device
        from studio.models.base_models import load_causal_lm, load_tokenizer, resolve_base_model

        resolved = resolve_base_model(name, self.settings)
        if resolved.task != "causal-lm":
            raise StudioError(f"{name} is not a text-generation model; the playground needs a causal language model")
        device = detect_device(self.settings.device).torch_device
        return load_causal_lm(resolved, device=device), load_tokenizer(resolved)

    def base_models(self) -> list[str]:
        """Chat-capable bases: the default first, then registered ones, then bases of adapters."""
        names = [self.settings.default_base_model]
        names += [m.name for m in self.registry.list_base_models() if m.task == "causal-lm"]
        names += self.registry.adapter_filter_choices()["base_model"]
        return list(dict.fromkeys(names))

    def targets(self, base_model: str, limit: int = 50) -> list[Target]:
        """The bare base plus the newest adapters trained on ``base_model`` (at most ``limit``)."""
        out = [Target(BASE_TARGET, f"{base_model} (no adapter)")]
        rows, _ = self.registry.page_adapters(AdapterFilters(base_model=base_model), limit=limit)
        for row in rows:
            out.append(Target(f"adapter:{row.id}", f"#{row.id} {row.name} ({row.variant})"))
        return out

    def _adapter_ref(self, base_model: str, target: str) -> AdapterRef | None:
        if target in (None, "", BASE_TARGET):
            return None
        kind, _, raw_id = target.partition(":")
        if kind != "adapter" or not raw_id.isdigit():
            raise ValidationFailed(f"unknown chat target {target!r}; pick the base model or an adapter")
        row = self.registry.get_adapter(int(raw_id))
        if row.base_model != base_model:
            raise ValidationFailed(
                f"adapter #{row.id} was trained on {row.base_model}, not {base_model}; "
                "pick that base model to chat with it"
            )
        return AdapterRef(key=f"adapter_{row.id}", path=row.path)

    def stream(
        self,
        base_model: str,
        target: str,
        messages: list[dict[str, str]],
        settings: GenerationSettings | None = None,
    ) -> Iterator[str]:
        """Yield the reply of ``target`` to ``messages`` as it grows (full text so far each time)."""
        last = None
        for reply in self.stream_panes(base_model, [(target, messages)], settings):
            if reply.text != last:
                last = reply.text
                yield reply.text

    def stream_panes(
        self,
        base_model: str,
        panes: list[tuple[str, list[dict[str, str]]]],
        settings: GenerationSettings | None = None,
    ) -> Iterator[PaneReply]:
        """Every pane's reply to its conversation, generated together and yielded as tokens arrive in any pane.

        ``panes`` are ``(target, messages)``. The engine's panes are submitted at once (one
        batch); each pane ends with one ``done`` reply. Closing the iterator cancels the rest.
        """
        settings = settings or GenerationSettings()
        for _, messages in panes:
            if not messages or messages[-1].get("role") != "user":
                raise ValidationFailed("the conversation must end with a user message")
        adapters = [self._adapter_ref(base_model, target) for target, _ in panes]
        on_engine = [i for i, ref in enumerate(adapters) if ref is None or ref.key not in self._peft_only]
        handles: dict[int, RequestHandle] = {}
        if on_engine:
            requests = [
                EngineRequest(messages=panes[i][1], adapter=adapters[i], **settings.model_dump()) for i in on_engine
            ]
            handles = dict(zip(on_engine, self.schedulers.get(base_model).submit_many(requests), strict=True))
        replies: queue.Queue[PaneReply | BaseException] = queue.Queue()
        stop = threading.Event()

        def answer(i: int) -> None:
            try:
                text = ""
                if i in handles:
                    try:
                        for update in handles[i].updates():
                            if stop.is_set():
                                return  # leaving the loop closes the stream, which cancels the request
                            text = update.text
                            replies.put(PaneReply(i, text, update.finish_reason is not None))
                        return
                    except AdapterNotServable as refusal:
                        self._peft_only[adapters[i].key] = str(refusal)
                        logger.info("answering with PEFT instead of the batched engine: %s", refusal)
                with closing(self._peft_stream(base_model, adapters[i], panes[i][1], settings)) as pieces:
                    for text in pieces:
                        if stop.is_set():
                            return
                        replies.put(PaneReply(i, text))
                replies.put(PaneReply(i, text, True))
            except BaseException as exc:  # shown to the caller, which stops every pane
                replies.put(exc)

        threads = [threading.Thread(target=answer, args=(i,), daemon=True) for i in range(len(panes))]
        for thread in threads:
            thread.start()
        try:
            remaining = len(panes)
            while remaining:
                reply = replies.get()
                if isinstance(reply, BaseException):
                    raise reply
                remaining -= reply.done
                yield reply
        finally:
            stop.set()
            for handle in handles.values():
                handle.cancel()

    def _peft_stream(
        self, base_model: str, adapter: AdapterRef | None, messages: list[dict[str, str]], settings: GenerationSettings
    ) -> Iterator[str]:
        """The reply from PEFT on the pool's model (one at a time), for adapters the engine refuses."""
        with self.pool.use(base_model, adapter) as (model, tokenizer):
            yield from stream_reply(model, tokenizer, messages, settings)
