"""Resumable checkpoints in the job directory.

Layout of ``<work_dir>/checkpoints/step-000123/``:

- ``trainable.safetensors``   every ``requires_grad`` tensor, by parameter name
- ``extra.safetensors`` + ``extra.json``   the variant's ``state_dict_extra`` (tensors / JSON)
- ``trainer_state.pt``        optimizer + scheduler + RNG states (+ the fp16 grad scaler's). ``torch.save`` is used only
  for this file, which this code wrote itself; it is read back with ``weights_only=True``.
- ``checkpoint.json``         step, total steps, seed, variant, and what the run trained on

A checkpoint directory is written under a temporary name and renamed, so a crash
never leaves a half-written one; older checkpoints beyond ``keep`` are removed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import StudioError

META = "checkpoint.json"


@dataclass
class Checkpoint:
    """What a checkpoint restores."""

    path: Path
    step: int
    meta: dict[str, Any]


@dataclass
class Gathered:
    """What a checkpoint writes of the model and the optimizers (whole tensors)."""

    trainable: dict[str, Any]  # every requires_grad tensor by parameter name
    extra: dict[str, Any]  # the variant's state_dict_extra
    optimizers: list[dict[str, Any]]  # each optimizer's state_dict()


def rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    work_dir: Path,
    step: int,
    model: Any,
    variant: Any,
    optimization: Any,
    meta: dict[str, Any],
    keep: int = 2,
    scaler: Any = None,
    gathered: Gathered | None = None,
) -> Path:
    """Write a checkpoint for ``step`` atomically; returns its directory.

    ``gathered`` holds the state a sharded (FSDP) run gathered from its ranks; the files are the same.
    """
    import torch
    from safetensors.torch import save_file

    root = Path(work_dir) / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if gathered is None:
        gathered = Gathered(
            trainable={n: p for n, p in model.named_parameters() if p.requires_grad},
            extra=variant.state_dict_extra(model),
            optimizers=[o.state_dict() for o in optimization.optimizers],
        )
    trainable = {n: p.detach().cpu().contiguous() for n, p in gathered.trainable.items()}
    save_file(trainable, str(tmp / "trainable.safetensors"))
    tensors, plain = {}, {}
    for key, value in gathered.extra.items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().cpu().contiguous()
        else:
            plain[key] = value
    save_file(tensors, str(tmp / "extra.safetensors"))
    (tmp / "extra.json").write_text(json.dumps(plain))
    torch.save(
        {
            "optimizers": gathered.optimizers,
            "schedulers": [s.state_dict() for s in optimization.schedulers],
            "rng": rng_state(),
            **({"scaler": scaler.state_dict()} if scaler is not None else {}),
        },
        tmp / "trainer_state.pt",
    )
    (tmp / META).write_text(json.dumps({**meta, "step": step}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The metadata of a checkpoint directory (fails clearly if it is not one)."""
    path = Path(path)
    if not (path / META).exists():
        raise StudioError(f"{path} is not a training checkpoint (no {META})")
    meta = json.loads((path / META).read_text())
    return Checkpoint(path=path, step=int(meta["step"]), meta=meta)


def load_variant_extra(checkpoint: Checkpoint) -> dict[str, Any]:
    """The variant's extra state: tensors from safetensors merged with JSON values."""
    from safetensors.torch import load_file

    state: dict[str, Any] = json.loads((checkpoint.path / "extra.json").read_text())
    state.update(load_file(str(checkpoint.path / "extra.safetensors")))
    return state


def load_trainable(checkpoint: Checkpoint, model: Any) -> None:
    """Copy the saved trainable tensors into ``model``; names and shapes must match exactly."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(checkpoint.path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in saved]
    unknown = [n for n in saved if n not in params]
    if missing or unknown:
        raise StudioError(
            f"checkpoint {checkpoint.path} does not fit this model "
            f"(missing {missing[:3]}, unexpected {unknown[:3]}); was it written by another variant or base?"
        )
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor.to(params[name].device))


def load_trainer_state(
    checkpoint: Checkpoint, optimization: Any, load_optimizer: Callable[[Any, dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Restore optimizer and scheduler states; returns the RNG state to apply just before step ``k+1``.

    ``load_optimizer(optimizer, saved)`` loads one optimizer's saved state instead of its own
    ``load_state_dict`` (a sharded run: :func:`studio.training.fsdp.load_optimizer_state`).
    """
    import torch

    state = torch.load(checkpoint.path / "trainer_state.pt", map_location="cpu", weights_only=True)
    if len(state["optimizers"]) != len(optimization.optimizers):
        raise StudioError(f"checkpoint {checkpoint.path} has a different number of optimizers")
    for optimizer, saved in zip(optimization.optimizers, state["optimizers"], strict=True):
        if load_optimizer is not None:
            load_optimizer(optimizer, saved)
        else:
            optimizer.load_state_dict(saved)
    for scheduler, saved in zip(optimization.schedulers, state["schedulers"], strict=True):
        scheduler.load_state_dict(saved)
    return state["rng"]


def load_scaler_state(checkpoint: Checkpoint, scaler: Any) -> None:
    """Restore the fp16 grad scaler (its loss scale), when the checkpoint has one."""
    import torch

    state = torch.load(checkpoint.path / "trainer_state.pt", map_location="cpu", weights_only=True)
    if "scaler" in state:
        scaler.load_state_dict(state["scaler"])
