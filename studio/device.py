"""Which device a worker computes on, and what it supports."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class DeviceInfo:
    """The compute device of this process: recorded with every job."""

    type: str  # "cuda" or "cpu"
    name: str  # e.g. "NVIDIA H100 80GB HBM3" or the CPU model
    index: int | None = None
    bf16: bool = False
    memory_bytes: int | None = None

    @property
    def torch_device(self) -> str:
        return f"cuda:{self.index}" if self.type == "cuda" else "cpu"

    @property
    def label(self) -> str:
        return f"{self.torch_device} ({self.name})"

    def as_dict(self) -> dict:
        return asdict(self)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def _cpu_bf16() -> bool:
    """bf16 autocast pays off only where the CPU has native bf16 (AVX512-BF16 or AMX)."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


@lru_cache(maxsize=4)
def detect_device(preference: str = "auto") -> DeviceInfo:
    """CUDA when present (or asked for), else CPU. ``preference`` is Settings.device."""
    import torch

    want_cuda = preference.startswith("cuda") or (preference == "auto" and torch.cuda.is_available())
    if want_cuda and torch.cuda.is_available():
        index = int(preference.split(":", 1)[1]) if ":" in preference else 0
        props = torch.cuda.get_device_properties(index)
        return DeviceInfo("cuda", props.name, index, torch.cuda.is_bf16_supported(), props.total_memory)
    import os

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    return DeviceInfo("cpu", _cpu_name(), None, _cpu_bf16(), memory)


def apply_torch_threads(threads: int | None) -> int:
    """Set torch's intra-op CPU threads when ``threads`` is given; returns the number in use.

    torch defaults to one thread per core. When other processes keep those cores busy
    (the web process answering in the playground, another worker), OpenMP threads spin
    waiting for each other: on the 2-core reference machine a training step under load
    ran several times slower with 2 threads than with 1 (bench/README.md). Operators of
    shared hosts set ``STUDIO_TORCH_THREADS``; the worker applies it at start.
    """
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()
