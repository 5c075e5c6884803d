"""Poisson sampling of the rows of one DP-SGD step.

Each row joins the step independently with probability q, so the batch size varies around
L = q·n (and may be zero). The RDP accountant's subsampled-Gaussian bound assumes exactly this
sampling; shuffled fixed-size batches would not match the ε it reports.
"""

from __future__ import annotations

from typing import Any


def make_generator(seed: int | None) -> Any:
    """A CPU torch generator: seeded for reproducible runs, from OS entropy when ``seed`` is None."""
    import torch

    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def poisson_sample(n: int, sample_rate: float, generator: Any) -> list[int]:
    """Indices of the rows in one Poisson-sampled step: each of ``n`` rows kept with probability ``sample_rate``."""
    import torch

    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if n <= 0:
        return []
    keep = torch.rand(n, generator=generator) < sample_rate
    return keep.nonzero().flatten().tolist()
