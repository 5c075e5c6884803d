"""Adapter banks: many LoRA adapters ready on one base model, paged in and out of a fixed number of slots.

Layout (composition spec §8): every linear layer an adapter targets is wrapped
once (:class:`studio.serving.lora_ops.LoRALinear`) and gets a :class:`LayerBank`
holding ``A [slots+1, r_max, d_in]``, ``B [slots+1, d_out, r_max]`` and
``scale [slots+1]``. A slot index means the same adapter in every layer; slot 0
is "no adapter" and stays zero. A layer an adapter does not target keeps zeros
and scale 0 in that adapter's slot.

Ranks are **zero-padded to the layer's largest rank**, not bucketed: one
tensor per layer lets a decode step gather every row's A and B with a single
index, whatever mix of ranks the batch holds; the padded rows and columns are
zeros, so they change nothing but a little compute in that gather path. The
prefill path slices each slot back to its true rank (``ranks``), so long
prompts pay only for the rank they have. ``r_max`` grows (the layer's tensors
are reallocated) when a larger adapter arrives, so no rank limit is needed.

Adapters live on disk (PEFT directories) and, once read, in host RAM
(:class:`HostAdapter`, LRU); :meth:`AdapterBank.acquire` copies them into a free
or least-recently-used slot. A slot held by a running request is pinned and
never evicted; when every slot is pinned, acquire says so instead of guessing.

Only plain LoRA on linear layers fits a slot; everything else is refused here
with the reason. DoRA, MiSS, LoRAPrune with masks and the other PEFT types on
linear layers are served through their plain-LoRA export
(studio/serving/servable.py: exact or SVD at a rank, with the error measured);
trained biases, LoRA on embeddings or convolutions and ``modules_to_save``
(whole trained copies of layers, not a low-rank term) have no such export and
keep the playground's PEFT path (studio/serving/pool.py).
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from studio.errors import StudioError

_PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


class AdapterNotServable(StudioError):
    """An adapter that the batched engine cannot hold in a low-rank slot (the message says why)."""


@dataclass(frozen=True)
class LayerDelta:
    """One layer's LoRA term: ``scale * B @ A``, ``A [r, d_in]``, ``B [d_out, r]``."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


@dataclass(frozen=True)
class HostAdapter:
    """A LoRA adapter read from disk into host RAM: module name (as in the base model) -> its delta."""

    key: str
    path: str
    layers: dict[str, LayerDelta]

    @property
    def max_rank(self) -> int:
        return max(delta.rank for delta in self.layers.values())

    def nbytes(self) -> int:
        return sum(d.A.numel() * d.A.element_size() + d.B.numel() * d.B.element_size() for d in self.layers.values())


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup: a key matches a module name ending in ``.key``.

    The same rule as ``peft.utils.other.get_pattern_key`` (first matching key wins), so the
    scale of every layer is the one PEFT itself would use.
    """
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _refusal(config: dict[str, Any]) -> str | None:
    """Why an adapter_config.json describes something other than plain linear LoRA (None when it is plain)."""
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        return f"it is a {peft_type} adapter; the engine serves plain LoRA only"
    if config.get("use_dora"):
        return "it uses DoRA, whose per-column norm of the merged weight is no low-rank slot"
    if config.get("modules_to_save"):
        names = ", ".join(map(str, config["modules_to_save"]))
        return f"it saves whole trained copies of {names} (modules_to_save), which no low-rank slot can hold"
    if str(config.get("bias", "none")) != "none" or config.get("lora_bias"):
        return "it trains biases, which change the base layers themselves"
    for field in ("layer_replication", "target_parameters", "alora_invocation_tokens", "trainable_token_indices"):
        if config.get(field):
            return f"it uses {field}, which the engine does not implement"
    if config.get("fan_in_fan_out"):
        return "it targets Conv1D (fan_in_fan_out) layers; the engine wraps nn.Linear only"
    return None


def _has_pruning_masks(directory: Path) -> bool:
    from studio.variants._loraprune_masks import masks_path

    return masks_path(directory) is not None


def refusal_reason(path: str | Path, config: dict[str, Any] | None = None) -> str | None:
    """Why the engine cannot read the adapter in ``path`` as it is (None when it is plain linear LoRA).

    Looks only at ``adapter_config.json`` and the files beside it (cheap); weights that turn out
    not to be a linear LoRA pair are refused later, by :func:`read_adapter`.
    """
    directory = Path(path)
    if config is None:
        config_file = directory / "adapter_config.json"
        if not config_file.is_file():
            raise StudioError(f"{directory} holds no adapter_config.json; is the adapter still on disk?")
        config = json.loads(config_file.read_text())
    reason = _refusal(config)
    if reason is None and _has_pruning_masks(directory):
        # A LoRAPrune adapter is its LoRA *and* its masks: serving the LoRA alone answers with the
        # unpruned model. Its plain-LoRA export folds the masks in (studio/serving/servable.py).
        reason = "it is a LoRAPrune adapter whose pruning masks zero whole rows of the base layers"
    return reason


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    safetensors = directory / "adapter_model.safetensors"
    if safetensors.is_file():
        from safetensors.torch import load_file

        return load_file(str(safetensors), device="cpu")
    legacy = directory / "adapter_model.bin"
    if legacy.is_file():
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise StudioError(f"{directory} holds no adapter_model.safetensors; is the adapter still on disk?")


def read_adapter(path: str | Path, key: str | None = None) -> HostAdapter:
    """Read a PEFT LoRA directory into host RAM, with each layer's scale as PEFT computes it.

    Honours ``use_rslora`` (``alpha / sqrt(r)``) and ``rank_pattern``/``alpha_pattern``;
    raises :class:`AdapterNotServable` for anything a low-rank slot cannot represent.
    """
    directory = Path(path)
    config_file = directory / "adapter_config.json"
    if not config_file.is_file():
        raise StudioError(f"{directory} holds no adapter_config.json; is the adapter still on disk?")
    config = json.loads(config_file.read_text())
    reason = refusal_reason(directory, config)
    if reason:
        raise AdapterNotServable(
            f"adapter {directory.name} cannot be served in a batch because {reason}; "
            "serve its plain-LoRA export (studio/serving/servable.py) or PEFT instead "
            "(the playground does so by itself)"
        )
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in _read_weights(directory).items():
        if "lora_embedding" in name or "modules_to_save" in name or "lora_magnitude" in name:
            raise AdapterNotServable(
                f"adapter {directory.name} holds {name}, which is not a LoRA term of a linear layer; "
                "serve it with PEFT instead (the playground does so by itself)"
            )
        match = _LORA_KEY.match(name.removeprefix(_PEFT_PREFIX))
        if match is None:
            continue
        parts.setdefault(match["module"], {})[match["part"]] = tensor
    rank, alpha = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    layers: dict[str, LayerDelta] = {}
    for module, pair in parts.items():
        if set(pair) != {"A", "B"} or pair["A"].dim() != 2:
            raise AdapterNotServable(f"adapter {directory.name}: {module} is not a linear LoRA pair (A and B)")
        r = int(_pattern_value(rank_pattern, module, rank))
        a = float(_pattern_value(alpha_pattern, module, alpha))
        if pair["A"].shape[0] != r:
            raise StudioError(
                f"adapter {directory.name}: {module} has rank {pair['A'].shape[0]} but its config says {r}; "
                "the adapter files do not match their adapter_config.json"
            )
        scale = a / math.sqrt(r) if config.get("use_rslora") else a / r
        layers[module] = LayerDelta(A=pair["A"].contiguous(), B=pair["B"].contiguous(), scale=scale)
    if not layers:
        raise StudioError(f"adapter {directory.name} holds no LoRA weights; was it saved by PEFT?")
    return HostAdapter(key=key or str(directory.resolve()), path=str(directory), layers=layers)


class LayerBank(nn.Module):
    """The slots of one linear layer: zero-padded A and B of every resident adapter, its scale and true rank."""

    def __init__(self, slots: int, d_in: int, d_out: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.register_buffer("A", torch.zeros(slots + 1, 0, d_in, dtype=dtype, device=device), persistent=False)
        self.register_buffer("B", torch.zeros(slots + 1, d_out, 0, dtype=dtype, device=device), persistent=False)
        self.register_buffer("scale", torch.zeros(slots + 1, dtype=dtype, device=device), persistent=False)
        self.ranks = [0] * (slots + 1)  # true rank per slot; 0 = nothing in this layer

    @property
    def r_max(self) -> int:
        return int(self.A.shape[1])

    def _grow(self, rank: int) -> None:
        pad = rank - self.r_max
        self.A = torch.nn.functional.pad(self.A, (0, 0, 0, pad))
        self.B = torch.nn.functional.pad(self.B, (0, pad))

    def write(self, slot: int, delta: LayerDelta | None) -> None:
        """Put ``delta`` in ``slot`` (None: clear it, so the slot adds nothing in this layer)."""
        self.A[slot].zero_()
        self.B[slot].zero_()
        if delta is None:
            self.scale[slot] = 0.0
            self.ranks[slot] = 0
            return
        if delta.rank > self.r_max:
            self._grow(delta.rank)
        self.A[slot, : delta.rank].copy_(delta.A)
        self.B[slot, :, : delta.rank].copy_(delta.B)
        self.scale[slot] = delta.scale
        self.ranks[slot] = delta.rank


class AdapterBank:
    """Slots for ``slots`` adapters on one base model, with LRU paging from host RAM and pinning.

    ``acquire(adapters)`` returns one slot index per adapter (0 for None) and pins
    them until ``release``; the engine holds them for as long as a request runs.
    """

    def __init__(self, model: nn.Module, slots: int, host_capacity: int | None = None):
        from studio.serving.lora_ops import LoRAContext

        if slots < 1:
            raise StudioError("the serving engine needs at least one adapter slot; set STUDIO_SERVING_SLOTS >= 1")
        self.model = model
        self.slots = slots
        self.host_capacity = max(slots, host_capacity or 4 * slots)
        self.context = LoRAContext()
        self.layers: dict[str, LayerBank] = {}  # wrapped module name -> its bank
        self._host: OrderedDict[str, HostAdapter] = OrderedDict()  # LRU: least recent first
        self._resident: OrderedDict[str, int] = OrderedDict()  # adapter key -> slot, LRU order
        self._pins: dict[int, int] = {}  # slot -> running requests using it
        self._free = list(range(1, slots + 1))
        param = next(model.parameters())
        self._dtype, self._device = param.dtype, param.device

    # Introspection (tests, status) -------------------------------------------------------

    def resident(self) -> dict[str, int]:
        """{adapter key: slot} in least-recently-used-first order."""
        return dict(self._resident)

    def pinned(self) -> dict[int, int]:
        """{slot: number of running requests holding it}."""
        return {slot: n for slot, n in self._pins.items() if n}

    # Host RAM ----------------------------------------------------------------------------

    def host_adapter(self, key: str, path: str) -> HostAdapter:
        """The adapter from host RAM, read from disk first when needed (host LRU evicts the oldest)."""
        adapter = self._host.get(key)
        if adapter is None:
            adapter = read_adapter(path, key)
            self._check_targets(adapter)
            self._host[key] = adapter
            while len(self._host) > self.host_capacity:
                self._host.popitem(last=False)
        self._host.move_to_end(key)
        return adapter

    def _check_targets(self, adapter: HostAdapter) -> None:
        modules = dict(self.model.named_modules())
        for name, delta in adapter.layers.items():
            module = modules.get(name)
            base = getattr(module, "base", module)
            if not isinstance(base, nn.Linear):
                raise AdapterNotServable(
                    f"adapter {Path(adapter.path).name} targets {name}, which is not a linear layer of this base "
                    "model; was it trained on another base?"
                )
            if tuple(delta.A.shape[1:]) != (base.in_features,) or tuple(delta.B.shape[:1]) != (base.out_features,):
                raise StudioError(
                    f"adapter {Path(adapter.path).name} does not fit {name} of this base model "
                    f"(shapes {tuple(delta.B.shape)} x {tuple(delta.A.shape)}); was it trained on another base?"
                )

    # Slots -------------------------------------------------------------------------------

    def acquire(self, adapters: Iterable[tuple[str, str] | None]) -> list[int]:
        """Slot indices for ``(key, path)`` pairs (None -> 0), paging adapters in and pinning each slot once per use.

        All or nothing: when the adapters cannot all get a slot (every other slot pinned),
        nothing stays pinned and :class:`SlotsBusy` says how many slots are missing.
        """
        wanted = list(adapters)
        taken: list[int] = []
        try:
            for item in wanted:
                slot = 0 if item is None else self._slot_for(*item)
                if slot:
                    self._pins[slot] = self._pins.get(slot, 0) + 1
                taken.append(slot)
        except SlotsBusy:
            self.release(taken)
            raise
        return taken

    def release(self, slots: Iterable[int]) -> None:
        """Unpin slots taken by :meth:`acquire` (one per use); they stay resident until evicted."""
        for slot in slots:
            if slot:
                self._pins[slot] -= 1

    def _slot_for(self, key: str, path: str) -> int:
        slot = self._resident.get(key)
        if slot is not None:
            self._resident.move_to_end(key)
            return slot
        adapter = self.host_adapter(key, path)
        slot = self._free.pop(0) if self._free else self._evict()
        self._page_in(adapter, slot)
        self._resident[key] = slot
        return slot

    def _evict(self) -> int:
        for key, slot in self._resident.items():  # least recently used first
            if not self._pins.get(slot):
                del self._resident[key]
                return slot
        raise SlotsBusy(
            f"all {self.slots} adapter slots are held by running requests; wait for one to finish "
            "or raise STUDIO_SERVING_SLOTS"
        )

    def _page_in(self, adapter: HostAdapter, slot: int) -> None:
        from studio.serving.lora_ops import wrap_linear

        for name in adapter.layers:
            if name not in self.layers:
                self.layers[name] = wrap_linear(self.model, name, self)
        for name, layer in self.layers.items():
            layer.write(slot, adapter.layers.get(name))

    def new_layer(self, d_in: int, d_out: int) -> LayerBank:
        """An empty bank for a newly wrapped layer, on the model's device and dtype."""
        return LayerBank(self.slots, d_in, d_out, self._dtype, self._device)


class SlotsBusy(StudioError):
    """Every adapter slot is pinned by a running request; the engine waits for one to finish."""
