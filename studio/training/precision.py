"""Compute precision per device: bf16/fp16 autocast or fp32, with a grad scaler for fp16.

The adapter stays fp32 and autocast runs the matmuls in the lower precision, so
optimizer updates, checkpoints and exports are fp32 whatever the compute precision
was. (On a GPU the frozen base linears are stored in the autocast dtype while training
and restored to their exact fp32 values afterwards: :mod:`studio.training.frozen_weights`.)

``auto`` picks:
- CUDA: bf16 where the GPU supports it (Ampere and later), else fp16 with a grad scaler;
- CPU: bf16 where it is actually faster: with AMX tiles always; with AVX512-BF16 only
  (``DeviceInfo.bf16`` without AMX) when a quick matmul measurement says bf16 beats fp32
  (it did not on the studio's reference machine: 0.6x); else fp32. Emulated bf16 (no
  native support) is never chosen automatically.

An explicit ``bf16``/``fp16``/``fp32`` is honoured on any device (with a warning
when it will be slow); fp16 always comes with a grad scaler.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from studio.device import DeviceInfo

MIN_CPU_BF16_SPEEDUP = 1.15  # auto takes bf16 on an AVX512-BF16 CPU without AMX only above this
MEASUREMENT_FILE = "machine-bf16-speedup.json"  # in the data dir: one measurement per machine


@dataclass(frozen=True)
class Precision:
    """The compute precision chosen for a run, and why."""

    name: str  # "bf16" | "fp16" | "fp32"
    requested: str  # what the request asked for ("auto", ...)
    device_type: str  # "cpu" | "cuda"
    reason: str
    warning: str | None = None

    @property
    def dtype(self) -> Any:
        """The autocast dtype, or None for plain fp32."""
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def uses_grad_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self) -> Any:
        """A context manager for forward passes (a no-op in fp32)."""
        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> Any:
        """A ``torch.amp.GradScaler`` for fp16, else None."""
        import torch

        return torch.amp.GradScaler(self.device_type) if self.uses_grad_scaler else None

    def describe(self) -> str:
        mode = "fp32" if self.name == "fp32" else f"{self.name} autocast"
        scaler = " with a grad scaler" if self.uses_grad_scaler else ""
        return f"{mode}{scaler} ({self.reason}); adapter weights fp32"

    def as_dict(self) -> dict[str, Any]:
        return {
            "precision": self.name,
            "requested": self.requested,
            "device": self.device_type,
            "grad_scaler": self.uses_grad_scaler,
            "reason": self.reason,
        }


def choose_precision(
    requested: str, device: DeviceInfo, cpu_bf16_speedup: float | None = None, cache_file: Path | None = None
) -> Precision:
    """The precision a run uses on ``device`` for the request's ``precision`` setting.

    ``cpu_bf16_speedup`` (bf16 / fp32 matmul throughput) is measured when auto needs it on a
    CPU with native bf16 but no AMX (see :func:`machine_bf16_speedup`; the measurement is kept
    in ``cache_file`` when given); tests pass a value.
    """
    kind = "cuda" if device.type == "cuda" else "cpu"
    if requested == "fp32":
        return Precision("fp32", requested, kind, "requested")
    if requested in ("bf16", "fp16"):
        warning = None
        if kind == "cpu" and (requested == "fp16" or not device.bf16):
            warning = (
                f"{requested} was requested but this CPU has no native {requested}: training may be slower than fp32"
            )
        elif kind == "cuda" and requested == "bf16" and not device.bf16:
            warning = "bf16 was requested but this GPU does not support it natively: training may be slow"
        return Precision(requested, requested, kind, "requested", warning)
    if kind == "cuda":
        if device.bf16:
            return Precision("bf16", requested, kind, "auto: the GPU supports bf16")
        return Precision("fp16", requested, kind, "auto: the GPU has no bf16, fp16 needs a grad scaler")
    if not device.bf16:
        return Precision("fp32", requested, kind, "auto: the CPU has no native bf16")
    if cpu_has_amx():
        return Precision("bf16", requested, kind, "auto: the CPU has AMX bf16 tiles")
    speedup = cpu_bf16_speedup if cpu_bf16_speedup is not None else machine_bf16_speedup(cache_file)
    if speedup >= MIN_CPU_BF16_SPEEDUP:
        return Precision("bf16", requested, kind, f"auto: bf16 matmuls measured {speedup:.2f}x fp32 on this CPU")
    return Precision(
        "fp32",
        requested,
        kind,
        f"auto: this CPU has AVX512-BF16 but no AMX, and bf16 matmuls measured {speedup:.2f}x the speed of fp32",
    )


def cpu_has_amx() -> bool:
    """AMX tiles (Sapphire Rapids and later): where bf16 matmuls are many times faster than fp32."""
    import torch

    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def machine_bf16_speedup(cache_file: Path | None = None) -> float:
    """bf16 / fp32 matmul speed on this machine, measured once and then read from ``cache_file``.

    A timing taken on a busy machine moves from run to run (0.6x one minute, 1.2x the next on
    the reference VM), and with it ``auto``'s choice: two runs of the same request would then
    compute in different precisions and give different loss curves. The first measurement is
    stored per (CPU, torch version, thread count), so the same machine keeps deciding the same.
    """
    import torch

    from studio.device import detect_device

    if cache_file is None:
        return measure_cpu_bf16_speedup()
    key = f"{detect_device('cpu').name} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    try:
        known = json.loads(Path(cache_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict) or not isinstance(known.get(key), int | float):
        known = known if isinstance(known, dict) else {}
        known[key] = measure_cpu_bf16_speedup()
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        Path(cache_file).write_text(json.dumps(known, indent=2), encoding="utf-8")
    return float(known[key])


@lru_cache(maxsize=1)
def measure_cpu_bf16_speedup() -> float:
    """bf16 / fp32 throughput of a transformer-sized matmul on this CPU (best of a few runs, ~0.3 s).

    AVX512-BF16 alone does not make bf16 faster everywhere: on the studio's 2-core Xeon VM
    (AVX512-BF16, AMX not exposed) oneDNN's bf16 kernels ran at about 0.6x the fp32 rate.
    Measured once per process; a run records the outcome and a resumed run keeps it.
    """
    import time

    import torch

    def timed(a: Any, w: Any) -> float:
        start = time.perf_counter()
        torch.nn.functional.linear(a, w)
        return time.perf_counter() - start

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(1024, 1024, generator=generator)
    w = torch.randn(1024, 1024, generator=generator)
    a16, w16 = a.bfloat16(), w.bfloat16()
    timed(a, w), timed(a16, w16)  # warm-up: kernel selection, first-touch
    # Interleaved, so that a burst of someone else's load hits both sides alike; best of each.
    fp32 = bf16 = float("inf")
    for _ in range(7):
        fp32 = min(fp32, timed(a, w))
        bf16 = min(bf16, timed(a16, w16))
    return fp32 / max(bf16, 1e-9)


def precision_cache(settings: Any) -> Path | None:
    """Where ``auto`` keeps this machine's bf16 measurement: the data dir (None without settings)."""
    data_dir = getattr(settings, "data_dir", None)
    return Path(data_dir) / MEASUREMENT_FILE if data_dir else None
