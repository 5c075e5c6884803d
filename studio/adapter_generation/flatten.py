"""A PEFT LoRA checkpoint <-> one flat, per-tensor z-scored vector θ (ICM-LoRA, spec §6).

The generator learns over vectors, so every checkpoint of a collection is laid out
the same way: tensors in a fixed key order (sorted state-dict keys), each z-scored
with its own mean and standard deviation, concatenated. The :class:`Layout` keeps,
per key, what is needed to undo that (mean, std, shape, numel, dtype).

θ is float64 so that ``unflatten(flatten(x))`` gives back every fp32/bf16 tensor
bit for bit: the z-score and its inverse are done in double precision, and the
rounding back to the stored dtype lands on the original value.

A generated θ is de-normalised with a *reference* checkpoint's layout (its stats)
and written as a standard PEFT LoRA directory next to that checkpoint's
``adapter_config.json``; only ``adapter_model.safetensors`` is ever read from an
adapter directory (no pickles).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from studio.errors import ValidationFailed

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"

# A constant tensor (e.g. a LoRA B still at its zero init) has std 0: it is stored as its mean
# with std 1, so the z-scores are 0 and the inverse gives the constant back.
MIN_STD = 1e-12


@dataclass(frozen=True)
class TensorStats:
    """How one tensor sits in θ and how to de-normalise it."""

    key: str
    shape: tuple[int, ...]
    numel: int
    mean: float
    std: float
    dtype: str  # torch dtype name without the "torch." prefix, e.g. "float32"


@dataclass(frozen=True)
class Layout:
    """The fixed key order of a checkpoint collection plus one checkpoint's per-tensor stats."""

    tensors: tuple[TensorStats, ...]

    @property
    def size(self) -> int:
        """D, the length of θ."""
        return sum(t.numel for t in self.tensors)

    @property
    def signature(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """(key, shape) pairs: two checkpoints can share a generator iff their signatures are equal."""
        return tuple((t.key, t.shape) for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored with a generator)."""
        return {"tensors": [asdict(t) | {"shape": list(t.shape)} for t in self.tensors]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Layout:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(TensorStats(**(t | {"shape": tuple(t["shape"])})) for t in data["tensors"]))


def load_lora_state(adapter_dir: str | Path) -> dict[str, Any]:
    """The tensors of ``adapter_dir/adapter_model.safetensors`` (CPU)."""
    from safetensors.torch import load_file

    path = Path(adapter_dir) / WEIGHTS
    if not path.is_file():
        raise ValidationFailed(f"{adapter_dir} has no {WEIGHTS}: only PEFT adapters saved as safetensors can be used")
    return load_file(str(path), device="cpu")


def flatten(state: dict[str, Any]) -> tuple[Any, Layout]:
    """(θ as a float64 vector, its layout) of a LoRA state dict; keys in sorted order."""
    import torch

    pieces, stats = [], []
    for key in sorted(state):
        tensor = state[key]
        if not torch.is_floating_point(tensor):
            raise ValidationFailed(f"{key}: a {tensor.dtype} tensor cannot be part of a generated adapter")
        values = tensor.detach().to("cpu", torch.float64).reshape(-1)
        mean = float(values.mean()) if values.numel() else 0.0
        std = float(values.std(unbiased=False)) if values.numel() > 1 else 0.0
        if not math.isfinite(std) or std < MIN_STD:
            std = 1.0
        pieces.append((values - mean) / std)
        stats.append(
            TensorStats(key, tuple(tensor.shape), values.numel(), mean, std, str(tensor.dtype).removeprefix("torch."))
        )
    theta = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.float64)
    return theta, Layout(tuple(stats))


def unflatten(theta: Any, layout: Layout) -> dict[str, Any]:
    """The state dict θ stands for, de-normalised with ``layout``'s stats (split by stored numels)."""
    import torch

    theta = theta.detach().to("cpu", torch.float64).reshape(-1)
    if theta.numel() != layout.size:
        raise ValueError(f"θ has {theta.numel()} values, the layout expects {layout.size}")
    state, offset = {}, 0
    for t in layout.tensors:
        piece = theta[offset : offset + t.numel] * t.std + t.mean
        state[t.key] = piece.reshape(t.shape).to(getattr(torch, t.dtype)).contiguous()
        offset += t.numel
    return state


def flatten_adapter(adapter_dir: str | Path) -> tuple[Any, Layout]:
    """:func:`flatten` of a PEFT adapter directory's weights."""
    return flatten(load_lora_state(adapter_dir))


def check_same_layout(layouts: list[Layout], names: list[str] | None = None) -> None:
    """Refuse a collection whose checkpoints do not share keys and shapes (one base, one LoRA shape)."""
    if not layouts:
        raise ValidationFailed("no adapter checkpoints were given")
    first = layouts[0].signature
    for i, layout in enumerate(layouts[1:], 1):
        if layout.signature != first:
            who = names[i] if names else f"checkpoint {i}"
            ref = names[0] if names else "checkpoint 0"
            raise ValidationFailed(
                f"{who} does not have the same LoRA tensors (keys and shapes) as {ref}: a generator is "
                "trained on adapters of one base model with one rank and one set of target modules"
            )


def write_peft_dir(state: dict[str, Any], adapter_config: dict[str, Any], out_dir: str | Path) -> Path:
    """Save ``state`` as ``out_dir/adapter_model.safetensors`` with ``adapter_config`` beside it."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
    (out / CONFIG).write_text(json.dumps(adapter_config, indent=2, sort_keys=True), encoding="utf-8")
    return out


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """The reference checkpoint's ``adapter_config.json``."""
    path = Path(adapter_dir) / CONFIG
    if not path.is_file():
        raise ValidationFailed(f"{adapter_dir} has no {CONFIG}")
    return json.loads(path.read_text(encoding="utf-8"))


def save_theta_as_adapter(theta: Any, reference_dir: str | Path, out_dir: str | Path) -> Path:
    """Unflatten θ with the reference checkpoint's stats and save it as a PEFT LoRA beside its config."""
    _, layout = flatten_adapter(reference_dir)
    return write_peft_dir(unflatten(theta, layout), read_adapter_config(reference_dir), out_dir)
