"""Which ``model`` names what: base models by name, adapters by ``adapter-<id>`` or by name.

A ``model`` is looked up in this order: a chat-capable base model's name, then
``adapter-<id>``, then an adapter's name (the newest adapter of that name, as
names need not be unique). ``GET /v1/models`` lists every base model, every
adapter as ``adapter-<id>`` and, once per name, the adapters' names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from models_db.registry import Registry
from studio.errors import NotFoundError
from studio.serving.pool import AdapterRef
from studio.settings import Settings

ADAPTER_ID = re.compile(r"adapter-(\d+)")
CHAT_TASK = "causal-lm"


@dataclass(frozen=True)
class Target:
    """What a request runs on: its base model and adapter (None: the bare base)."""

    model: str  # the id the client used, echoed in responses
    base_model: str
    adapter: AdapterRef | None
    adapter_id: int | None = None  # the registry id of ``adapter`` (None: the bare base)


def adapter_id(row_id: int) -> str:
    return f"adapter-{row_id}"


def _created(value: datetime | None) -> int:
    return int(value.timestamp()) if value is not None else 0


class Catalog:
    """The models the API serves, read from the registry on every call (new adapters show up at once)."""

    def __init__(self, registry: Registry, settings: Settings):
        self.registry = registry
        self.settings = settings

    def _bases(self) -> dict[str, int]:
        """Chat-capable base models -> created time: the default, registered causal LMs, bases of adapters."""
        rows = self.registry.list_base_models()
        other_tasks = {r.name for r in rows if r.task != CHAT_TASK}
        bases = {self.settings.default_base_model: 0}
        bases |= {r.name: _created(r.created_at) for r in rows if r.task == CHAT_TASK}
        for name in self.registry.adapter_filter_choices()["base_model"]:
            if name not in other_tasks:
                bases.setdefault(name, 0)
        return bases

    def list(self) -> list[dict]:
        """The ``data`` of ``GET /v1/models``."""
        bases = self._bases()
        out = [{"id": name, "object": "model", "created": t, "owned_by": "system"} for name, t in bases.items()]
        named: set[str] = set(bases)
        for row in self.registry.list_adapters():  # newest first: a shared name lists the newest adapter
            if row.base_model not in bases:
                continue
            entry = {"object": "model", "created": _created(row.created_at), "owned_by": "user"}
            entry |= {"parent": row.base_model, "root": row.base_model}
            out.append({"id": adapter_id(row.id), **entry})
            if row.name not in named and not ADAPTER_ID.fullmatch(row.name):
                named.add(row.name)
                out.append({"id": row.name, **entry})
        return out

    def resolve(self, model: str) -> Target:
        """The base model and adapter ``model`` names; NotFoundError when it names nothing served."""
        bases = self._bases()
        if model in bases:
            return Target(model, model, None)
        match = ADAPTER_ID.fullmatch(model)
        row = None
        if match:
            try:
                row = self.registry.get_adapter(int(match.group(1)))
            except NotFoundError:
                row = None
        else:
            row = self.registry.newest_adapter_named(model)
        if row is None or row.base_model not in bases:
            raise NotFoundError(f"The model `{model}` does not exist")
        # The same key as the playground, so both share the adapter's engine slot.
        return Target(model, row.base_model, AdapterRef(key=f"adapter_{row.id}", path=row.path), row.id)
