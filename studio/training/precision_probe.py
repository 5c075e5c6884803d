"""``auto`` precision on a GPU: time one training step of this model at this shape, both ways.

bf16 autocast is the right default for a model that keeps a GPU busy: the matmuls run
on the tensor cores and the frozen weights take half the memory. A small model on a big
GPU is different: its step is bound by kernel launches, not arithmetic, and autocast
adds a cast kernel per adapter tensor and per activation. On an H100 the studio's bf16
default trained SmolLM2-135M at 8 rows per step at 0.51x the speed of a plain fp32 loop,
while fp32 gave 1.10x (docs/performance.md). Which side of that line a job falls on
depends on the model, the rows per step and the card, so ``auto`` measures it:

1. before the variant wraps the base model, :func:`time_step_precisions` runs a few
   forward + backward passes of the run's first batch in fp32 and in the low precision
   (frozen linears stored in it, as the run would), with rank-8 stand-in adapters
   hooked onto the target layers so that the adapter kernels are counted too;
2. :func:`settle_precision` keeps the low precision unless fp32 was clearly faster and
   fits the memory plan just as well (fp32 never costs the job checkpointing or smaller
   micro-batches).

The probe leaves the model exactly as it found it (weights, flags, gradients, hooks, RNG
state), and its timings are kept per (card, torch, model, step shape) in the data dir, so
the same request on the same machine always computes in the same precision. Models over
:data:`PROBE_MAX_PARAMS` parameters are not probed: they are compute-bound, and bf16 is
right for them. A probe that fails (out of memory, say) keeps the static choice.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from studio.training.precision import Precision

PROBE_FILE = "gpu-precision-probes.json"  # in the data dir, beside the CPU measurement
PROBE_MAX_PARAMS = 1_000_000_000  # above this a step is compute-bound: bf16 without measuring
MIN_FP32_ADVANTAGE = 1.10  # fp32 replaces bf16 only when at least this much faster (bf16 saves memory)
STAND_IN_RANK = 8


@dataclass(frozen=True)
class StepTimings:
    """Best seconds per training step of the probe batch in fp32 and in the low precision."""

    fp32_s: float
    low_s: float
    low_name: str  # "bf16" | "fp16"

    @property
    def fp32_speedup(self) -> float:
        """How many times faster fp32 ran than the low precision."""
        return self.low_s / max(self.fp32_s, 1e-12)

    def as_dict(self) -> dict[str, Any]:
        return {"fp32_s": self.fp32_s, "low_s": self.low_s, "low": self.low_name}


def wants_probe(requested: str, device: Any, n_params: int, resumed_precision: str | None) -> bool:
    """Whether ``auto`` should measure this run: a GPU, auto, a fresh run, a model small enough to be launch-bound."""
    return requested == "auto" and device.type == "cuda" and resumed_precision is None and n_params <= PROBE_MAX_PARAMS


def probe_key(device: Any, model: Any, batch: dict[str, Any], targets: list[str]) -> str:
    """The cache key: card, torch version, model architecture and size, targets and step shape.

    The step shape is rows x padded width with the width rounded up to a power of two, so
    that runs on other rows of similar length share one measurement.
    """
    import torch

    rows, width = batch["input_ids"].shape
    n_params = sum(p.numel() for p in model.parameters())
    bucket = 1 << max(0, int(width) - 1).bit_length()
    return (
        f"{device.name} | torch {torch.__version__} | {type(model).__name__} {n_params} | "
        f"{','.join(sorted(targets))} | {rows}x{bucket}"
    )


def cached_timings(cache_file: Path | None, key: str, measure: Callable[[], StepTimings]) -> tuple[StepTimings, bool]:
    """(timings, measured now?): read from ``cache_file`` under ``key``, or measured and stored there."""
    known: dict[str, Any] = {}
    if cache_file is not None:
        try:
            loaded = json.loads(Path(cache_file).read_text(encoding="utf-8"))
            known = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            known = {}
        entry = known.get(key)
        if isinstance(entry, dict):
            try:
                return StepTimings(float(entry["fp32_s"]), float(entry["low_s"]), str(entry["low"])), False
            except (KeyError, TypeError, ValueError):
                pass  # a damaged entry is measured again
    timings = measure()
    if cache_file is not None:
        known[key] = timings.as_dict()
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        Path(cache_file).write_text(json.dumps(known, indent=2, sort_keys=True), encoding="utf-8")
    return timings, True


def settle_precision(static: Precision, timings: StepTimings | None, fp32_fits_as_well: bool) -> Precision:
    """The run's precision: ``static`` (bf16/fp16 by the GPU's support), or fp32 where the probe says so."""
    if timings is None or static.requested != "auto" or static.name == "fp32":
        return static  # (wants_probe decides on which devices a probe runs at all)
    measured = f"a training step measured {timings.fp32_s * 1000:.1f} ms in fp32, {timings.low_s * 1000:.1f} ms in {timings.low_name}"
    if timings.fp32_speedup < MIN_FP32_ADVANTAGE:
        return replace(static, reason=f"{static.reason}; {measured}")
    if not fp32_fits_as_well:
        return replace(static, reason=f"{static.reason}; {measured}, but fp32 would need more memory savings")
    return Precision("fp32", static.requested, static.device_type, f"auto: the step is launch-bound ({measured})")


def time_step_precisions(
    model: Any,
    batch: dict[str, Any],
    *,
    task: str,
    targets: list[str],
    low_dtype: Any,
    chunk_tokens: int,
    repeats: int = 3,
) -> StepTimings:
    """Best-of-``repeats`` seconds of one forward + backward pass of ``batch`` in fp32 and under ``low_dtype``.

    ``model`` is the plain base model (before any variant wraps it); stand-in rank-8
    adapters are hooked onto ``targets`` for the measurement and removed afterwards. The
    two precisions alternate in blocks, so a burst of load elsewhere hits both alike.
    """
    import torch

    from studio.training.frozen_weights import FrozenLinearStorage
    from studio.training.losses import LossFunction

    device = batch["input_ids"].device
    low_name = "bf16" if low_dtype == torch.bfloat16 else "fp16"
    base_ids = {id(p) for p in model.parameters()}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def one_step(loss_fn: LossFunction, dtype: Any) -> float:
        sync()
        began = time.perf_counter()
        autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with autocast:
            value, _ = loss_fn(model, batch)
        if value.requires_grad:  # no target layer matched: a forward-only probe
            value.backward()
        sync()
        return time.perf_counter() - began

    fp32_loss = LossFunction.for_model(model, task, chunk_tokens, None)
    low_loss = LossFunction.for_model(model, task, chunk_tokens, low_dtype)
    best = {"fp32": float("inf"), "low": float("inf")}
    with _untouched(model, device), _stand_in_adapters(model, targets, device) as adapters:
        for block in range(2):  # fp32, low, fp32, low: the first pass of each block is a warm-up
            for side in ("fp32", "low"):
                storage = FrozenLinearStorage.convert(model, low_dtype, base_ids) if side == "low" else None
                try:
                    loss_fn, dtype = (low_loss, low_dtype) if side == "low" else (fp32_loss, None)
                    one_step(loss_fn, dtype)
                    for _ in range(max(1, repeats - 1) if block else 1):
                        best[side] = min(best[side], one_step(loss_fn, dtype))
                finally:
                    if storage is not None:
                        storage.restore()
                    for param in adapters:
                        param.grad = None
    return StepTimings(best["fp32"], best["low"], low_name)


@contextlib.contextmanager
def _untouched(model: Any, device: Any) -> Iterator[None]:
    """Freeze every parameter and keep the RNG for the probe; put flags, grads and mode back after."""
    import torch

    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            for param, _ in flags:
                param.requires_grad_(False)
            model.train()
            yield
        finally:
            for param, flag in flags:
                param.requires_grad_(flag)
                param.grad = None
            model.train(was_training)
            if device.type == "cuda":
                torch.cuda.empty_cache()


@contextlib.contextmanager
def _stand_in_adapters(model: Any, targets: list[str], device: Any) -> Iterator[list[Any]]:
    """Rank-8 LoRA-shaped adapters (fp32, trainable) added to each target layer's output by hooks."""
    import torch
    import torch.nn.functional as F

    from studio.variants.targets import find_target_linears

    generator = torch.Generator().manual_seed(0)
    handles, params = [], []

    def hook_for(a: Any, b: Any) -> Callable[..., Any]:
        def add_update(module: Any, args: tuple[Any, ...], output: Any) -> Any:
            return output + F.linear(F.linear(args[0], a), b)

        return add_update

    try:
        for linear in find_target_linears(model, targets).values():
            a = torch.randn(STAND_IN_RANK, linear.in_features, generator=generator).mul_(0.01)
            a = a.to(device).requires_grad_(True)
            b = torch.zeros(linear.out_features, STAND_IN_RANK, device=device, requires_grad=True)
            params += [a, b]
            handles.append(linear.register_forward_hook(hook_for(a, b)))
        yield params
    finally:
        for handle in handles:
            handle.remove()


def probe_precision(
    model: Any,
    batch: dict[str, Any],
    *,
    device: Any,
    task: str,
    targets: list[str],
    chunk_tokens: int,
    cache_file: Path | None,
    log: Callable[..., Any],
) -> StepTimings | None:
    """The step timings ``auto`` decides by (cached), or None when the probe failed (logged)."""
    import torch

    low_dtype = torch.bfloat16 if device.bf16 else torch.float16
    key = probe_key(device, model, batch, targets)

    def measure() -> StepTimings:
        return time_step_precisions(
            model, batch, task=task, targets=targets, low_dtype=low_dtype, chunk_tokens=chunk_tokens
        )

    try:
        timings, fresh = cached_timings(cache_file, key, measure)
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
        log(f"precision probe failed ({type(exc).__name__}: {str(exc)[:200]}); keeping the GPU's default", "warning")
        return None
    if fresh:
        log(
            f"precision probe: one step takes {timings.fp32_s * 1000:.1f} ms in fp32, "
            f"{timings.low_s * 1000:.1f} ms in {timings.low_name} (kept for this model and step shape)"
        )
    return timings


def probe_cache(settings: Any) -> Path | None:
    """Where the GPU probes are kept: the data dir (None without settings)."""
    data_dir = getattr(settings, "data_dir", None)
    return Path(data_dir) / PROBE_FILE if data_dir else None
