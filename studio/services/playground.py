"""PlaygroundService: chat with a base model and its adapters, side by side, streamed.

The UI names what each pane talks to as a *target*: ``"base"`` or
``"adapter:<id>"``. Every pane whose target the batched engine can serve is
submitted at the same moment to the base model's
:class:`~studio.serving.scheduler.Scheduler`, so all panes are prefilled and
decoded in one batch and their replies stream side by side.

The engine holds plain LoRA only. An adapter it refuses but whose adapted
layers are all linear (DoRA, MiSS, LoRAPrune with masks, AdaLoRA and the other
PEFT types) is served through its plain-LoRA export
(:func:`studio.serving.servable.served_lora`): ΔW factorised by SVD, exact at
the numerical rank where the variants table says exact, at the adapter's own
rank otherwise, written once next to the adapter. :meth:`PlaygroundService.serving_info`
says how a target is served and, for an approximation, the measured error per
layer (max and mean), which the playground shows under the pane and the
registry keeps in the adapter's metrics.

Measured reasoning (this service used to answer all of them with PEFT, arguing
that the SVD costs more than PEFT answers): on the tiny test model the export
takes ~0.05-0.2 s once per adapter and rank, and on SmolLM2-135M a few seconds,
then it is cached on disk; PEFT's pool answers one pane at a time under one lock
and keeps a second copy of the base per PEFT type, so two such panes took twice
as long as one. With the export they join the batch. The price is the
approximation for DoRA (its magnitude rescales whole columns of W0: a full-rank
term, ~16 % max layer error at rank 4 on a random tiny DoRA with magnitudes moved
20 %) and MiSS "bat" (~4 %); MiSS "balance"/"mini" and AdaLoRA are exact. The
error is shown, never hidden.

MeteoRA mixtures (variant ``mixture``) route every token to its own experts, which
the engine's per-request banks cannot express: they are answered on a loaded
:class:`~studio.composition.meteora.MeteoRAModel` through
:class:`~studio.composition.mixture_serving.MixturePool` (an LRU of one bundle, one
reply at a time, **not batched**), the same fallback role as the PEFT pool below;
:meth:`PlaygroundService.mixture_scheduler` gives the /v1 API the same path.

Only adapters with no plain-LoRA export at all (``modules_to_save``, trained
biases, LoRA on embeddings or convolutions) are still answered by PEFT through a
:class:`~studio.serving.pool.ModelPool`, the reason logged once. Both the
scheduler and the pool are per service instance, so per web process; the pool
(a second copy of the base) is loaded only when such an adapter is asked for.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models_db.registry import Registry
from studio.composition.meteora import ExpertRef
from studio.composition.mixture_checks import MIXTURE_VARIANT
from studio.composition.mixture_serving import MixturePool, MixtureScheduler
from studio.errors import NotFoundError, StudioError, ValidationFailed
from studio.schema import AdapterFilters
from studio.serving.bank import AdapterNotServable
from studio.serving.engine import EngineRequest, ServingEngine
from studio.serving.generation import GenerationSettings, stream_reply
from studio.serving.pool import AdapterRef, ModelPool
from studio.serving.scheduler import RequestHandle, Schedulers
from studio.serving.servable import NoPlainExport, ServedLora, served_lora
from studio.settings import Settings

logger = logging.getLogger(__name__)

BASE_TARGET = "base"
GENERATOR_VARIANT = "icm_generator"  # studio.adapter_generation.jobs.GENERATOR_VARIANT (same reason)
RECLORA_VARIANT = "reclora"  # studio.composition.reclora_job.VARIANT (not imported: it pulls in torch code)


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
        self._served: dict[str, ServedLora | None] = {}  # adapter key -> its plain-LoRA export (None: plain LoRA)
        self._variants: dict[str, str] = {}  # adapter key -> the registry's variant name
        self._ids: dict[str, int] = {}  # adapter key -> registry id
        self._export_lock = threading.Lock()  # one export at a time per process (each loads a base copy)
        self._paths: dict[str, str] = {}  # adapter key -> its directory (a mixture's bundle)
        self.mixtures = MixturePool(self._load_base, self._expert_dir, size=1)  # MeteoRA mixtures, one at a time

    def _expert_dir(self, ref: ExpertRef) -> str:
        """A mixture expert's adapter directory: the registry's current path for a registered expert."""
        if ref.adapter_id is None:
            return ref.path
        try:
            return self.registry.get_adapter(ref.adapter_id).path
        except NotFoundError:
            raise StudioError(
                f"expert adapter #{ref.adapter_id} ({ref.name}) of this mixture was deleted; the mixture cannot run"
            ) from None

    def is_mixture(self, key: str | None) -> bool:
        """True when the adapter key (``adapter_<id>``, seen through a target) is a MeteoRA mixture."""
        return key is not None and self._variants.get(key) == MIXTURE_VARIANT

    def mixture_scheduler(self, base_model: str, target: str) -> MixtureScheduler | None:
        """A scheduler-shaped runner when ``target`` (``"adapter:<id>"``) is a mixture, else None.

        The /v1 API submits a mixture's requests to it (same handles and updates as the engine's).
        """
        ref = self._adapter_ref(base_model, target)
        if ref is None or not self.is_mixture(ref.key):
            return None
        return MixtureScheduler(self.mixtures, base_model, ref.path)

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

    def _load_export_base(self, name: str):
        """A fresh fp32 CPU copy of the base, for computing an adapter's ΔW (the export is device independent)."""
        from studio.models.base_models import load_causal_lm, resolve_base_model

        return load_causal_lm(resolve_base_model(name, self.settings), device="cpu").eval()

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
            if row.variant == GENERATOR_VARIANT:
                continue  # a generator makes adapters; it is not one
            out.append(Target(f"adapter:{row.id}", f"#{row.id} {row.name} ({row.variant})"))
        return out

    def _adapter_ref(self, base_model: str, target: str, user: str | None = None) -> AdapterRef | None:
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
        if row.variant == GENERATOR_VARIANT:
            raise ValidationFailed(f"#{row.id} is an ICM-LoRA generator: chat with an adapter it generated")
        if row.variant == RECLORA_VARIANT:
            return self._user_ref(row, user)
        key = f"adapter_{row.id}"
        self._variants[key], self._ids[key] = row.variant, row.id
        return AdapterRef(key=key, path=row.path)

    def _user_ref(self, row: Any, user: str | None) -> AdapterRef:
        """A RecLoRA bundle served for one user: that user's mixture as a plain PEFT LoRA.

        The user's factors are exported to ``<bundle>/users/<safe name>/`` on the first request
        for that user (keyed bundle + user, so the engine's bank pages it like any adapter);
        unknown and absent users share the mean gate's folder. This writes one small file set
        per user actually served, never one for every user of the bundle.
        """
        from studio.composition.reclora_users import cached_user_adapter

        with self._export_lock:  # one writer per process; the rename in cached_user_adapter covers processes
            path, _known = cached_user_adapter(row.path, user)
        key = f"adapter_{row.id}@user-{path.name}"
        self._variants[key], self._ids[key] = "lora", row.id  # a plain LoRA: the engine reads it as it is
        return AdapterRef(key=key, path=str(path))

    def _plain_export(self, base_model: str, ref: AdapterRef) -> ServedLora | None:
        """The adapter's plain-LoRA export for the engine (None: the engine reads it as it is).

        Raises :class:`NoPlainExport` (remembered) for adapters only PEFT can serve.
        """
        if ref.key in self._peft_only:
            raise NoPlainExport(self._peft_only[ref.key])
        if ref.key in self._served:
            return self._served[ref.key]
        with self._export_lock:
            if ref.key not in self._served:
                try:
                    served = served_lora(
                        ref.path, lambda: self._load_export_base(base_model), variant=self._variants.get(ref.key)
                    )
                except NoPlainExport as refusal:
                    self._peft_only[ref.key] = str(refusal)
                    logger.info("answering with PEFT instead of the batched engine: %s", refusal)
                    raise
                if served is not None:
                    logger.info("adapter %s %s", ref.key, served.describe())
                    self._record(ref.key, served)
                self._served[ref.key] = served
        return self._served[ref.key]

    def _record(self, key: str, served: ServedLora) -> None:
        """Keep the export's rank and error in the adapter's registry metrics (sortable in the Adapters tab)."""
        adapter_id = self._ids.get(key)
        if adapter_id is None:
            return
        self.registry.update_adapter_metrics(
            adapter_id,
            {
                "served_lora_rank": float(served.rank),
                "served_lora_max_error": served.max_error,
                "served_lora_mean_error": served.mean_error,
            },
        )

    def _engine_ref(self, base_model: str, ref: AdapterRef | None) -> AdapterRef | None:
        """What the engine loads for ``ref``: the adapter itself or its plain-LoRA export."""
        if ref is None:
            return None
        if self.is_mixture(ref.key):
            raise ValidationFailed(f"{ref.key} is a mixture: the batched engine cannot route per token")
        served = self._plain_export(base_model, ref)
        if served is None:
            return ref
        return AdapterRef(key=f"{ref.key}@{Path(served.path).name}", path=served.path)

    def engine_adapter(self, base_model: str, target: str, user: str | None = None) -> AdapterRef | None:
        """What the engine loads for a chat target (``"base"`` or ``"adapter:<id>"``): the adapter or its export.

        The /v1 API resolves its ``model`` through here, so API requests and playground panes
        share one export and one engine slot. Raises :class:`NoPlainExport` for adapters only
        PEFT can serve. ``user`` picks the user's mixture of a personalised (RecLoRA) adapter (an
        unknown or absent user gets the mean gate); other adapters ignore it.
        """
        return self._engine_ref(base_model, self._adapter_ref(base_model, target, user))

    def is_personalised(self, target: str | None) -> bool:
        """True when ``target`` (``"adapter:<id>"``) is a personalised (RecLoRA) bundle, whose reply depends on a user."""
        kind, _, raw_id = (target or "").partition(":")
        if kind != "adapter" or not raw_id.isdigit():
            return False
        try:
            return self.registry.get_adapter(int(raw_id)).variant == RECLORA_VARIANT
        except NotFoundError:
            return False

    def serving_info(self, base_model: str, target: str) -> dict[str, Any]:
        """How ``target`` is served: ``{"served_by": "engine" | "engine-export" | "peft", "description", ...}``.

        For an export the dict also holds its rank, ``exact``, ``max_error`` and ``mean_error``
        (relative Frobenius error per layer) and per-layer ``errors``; the /v1 API can put it in
        ``/v1/models`` metadata. Exports the adapter on first call (cached on disk afterwards).
        """
        ref = self._adapter_ref(base_model, target)
        if ref is None:
            return {"served_by": "engine", "description": ""}
        if self.is_mixture(ref.key):
            return {
                "served_by": "mixture",
                "description": "a MeteoRA mixture: answered on its own model, one reply at a time (not batched)",
            }
        try:
            served = self._plain_export(base_model, ref)
        except NoPlainExport as refusal:
            return {"served_by": "peft", "description": f"served by PEFT one reply at a time: {refusal}"}
        if served is None:
            return {"served_by": "engine", "description": ""}
        info = served.as_dict()
        return {"served_by": "engine-export", **{k: info[k] for k in info if k not in ("path", "source")}}

    def serving_note(self, base_model: str, target: str) -> str:
        """The line the playground shows under a pane's picker (empty for the base and plain LoRA)."""
        return self.serving_info(base_model, target)["description"]

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
        users: list[str | None] | None = None,
    ) -> Iterator[PaneReply]:
        """Every pane's reply to its conversation, generated together and yielded as tokens arrive in any pane.

        ``panes`` are ``(target, messages)``. The engine's panes are submitted at once (one
        batch); each pane ends with one ``done`` reply. Closing the iterator cancels the rest.
        ``users`` (one per pane, None or "" for none) picks the user of a personalised (RecLoRA)
        pane's adapter, as the /v1 ``user`` field does; other panes ignore it.
        """
        settings = settings or GenerationSettings()
        for _, messages in panes:
            if not messages or messages[-1].get("role") != "user":
                raise ValidationFailed("the conversation must end with a user message")
        who = [(u or "").strip() or None for u in (users or [])] + [None] * len(panes)
        adapters = [self._adapter_ref(base_model, target, who[i]) for i, (target, _) in enumerate(panes)]
        engine_refs: dict[int, AdapterRef | None] = {}
        for i, ref in enumerate(adapters):
            if ref is not None and self.is_mixture(ref.key):
                continue  # answered by the mixture pool below
            with suppress(NoPlainExport):  # those panes are answered by PEFT below
                engine_refs[i] = self._engine_ref(base_model, ref)
        on_engine = list(engine_refs)
        handles: dict[int, RequestHandle] = {}
        if on_engine:
            requests = [
                EngineRequest(messages=panes[i][1], adapter=engine_refs[i], **settings.model_dump()) for i in on_engine
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
                ref = adapters[i]
                if ref is not None and self.is_mixture(ref.key):
                    source = self.mixtures.stream(base_model, ref.path, panes[i][1], settings)
                else:
                    source = self._peft_stream(base_model, ref, panes[i][1], settings)
                with closing(source) as pieces:
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
