"""PlaygroundService: chat with a base model and its adapters, side by side, streamed.

The UI names what each pane talks to as a *target*: ``"base"`` or
``"adapter:<id>"``. This service turns targets into models through a
:class:`~studio.serving.pool.ModelPool` (one per service instance, so one per
web process) and streams replies.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from models_db.registry import Registry
from studio.errors import StudioError, ValidationFailed
from studio.schema import AdapterFilters
from studio.serving.generation import GenerationSettings, stream_reply
from studio.serving.pool import AdapterRef, ModelPool
from studio.settings import Settings

BASE_TARGET = "base"


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
        self.pool = pool or ModelPool(self._load_base, max_adapters=max_adapters)

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
        if not messages or messages[-1].get("role") != "user":
            raise ValidationFailed("the conversation must end with a user message")
        adapter = self._adapter_ref(base_model, target)
        with self.pool.use(base_model, adapter) as (model, tokenizer):
            yield from stream_reply(model, tokenizer, messages, settings or GenerationSettings())
