"""SoRA's gate thresholds and its sparsifying scheduler, as pure functions (spec §5).

Thresholds (applied to the gate after each gate-optimizer step, ξ > 0):

- ``paper``: soft threshold ``sign(v) · max(|v| − ξ, 0)``.
- ``official``: the official ``SparseAdamW`` does, in place and in this order,
  ``v[v > ξ] −= ξ; v[v < −ξ] += ξ; v[|v| < ξ] = 0``. Entries in (ξ, 2ξ) are first moved
  into (0, ξ) and then zeroed, so in effect |v| < 2ξ becomes 0 and every other entry
  moves by ξ towards 0 (|v| = ξ exactly is left unchanged, as in the official code).

Sparsifying scheduler: an initial phase at ξ0, then ξ steps through ``n`` values
(``linspace(ξ0, ξ_max, n)[1:]``, one per stage). The run's steps are split into an
initial share and n−1 equal stages. ``stage_lr``: ``official`` reuses the run's schedule
squeezed into the initial phase (the official code keeps the decayed schedulers, so the
learning rate is 0 in later stages and only the threshold still moves the gates);
``restart`` gives every stage its own warmup-then-decay schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from studio.variants.base import lr_lambda


def threshold_paper(v: torch.Tensor, xi: float) -> torch.Tensor:
    """Soft threshold sign(v)·max(|v|−ξ, 0)."""
    return torch.sign(v) * torch.clamp(v.abs() - xi, min=0.0)


def threshold_official(v: torch.Tensor, xi: float) -> torch.Tensor:
    """The official optimizer's three in-place masks, in its order (returns a new tensor)."""
    out = v.clone()
    if xi <= 0:
        return out
    out[out > xi] -= xi
    out[out < -xi] += xi
    out[out.abs() < xi] = 0.0
    return out


def apply_threshold(v: torch.Tensor, xi: float, mode: str) -> torch.Tensor:
    """Threshold ``v`` with ξ in ``mode`` ("paper" | "official"); ξ ≤ 0 leaves it unchanged."""
    if xi <= 0:
        return v.clone()
    if mode == "paper":
        return threshold_paper(v, xi)
    if mode == "official":
        return threshold_official(v, xi)
    raise ValueError(f"unknown threshold mode {mode!r}")


def xi_values(xi0: float, xi_max: float, n: int, spacing: str = "linear") -> list[float]:
    """The n thresholds of the scheduler (official ``_build_lambda_list``)."""
    if n < 1:
        raise ValueError("the scheduler needs at least one stage")
    if n == 1:
        return [float(xi0)]
    t = [i / (n - 1) for i in range(n)]
    if spacing == "linear":
        return [xi0 + (xi_max - xi0) * u for u in t]
    if spacing == "log_linear":  # log(linspace(exp(ξ0), exp(ξ_max)))
        return [math.log(math.exp(xi0) + (math.exp(xi_max) - math.exp(xi0)) * u) for u in t]
    if spacing == "exp_linear":  # exp(linspace(log ξ0, log ξ_max)); needs ξ0 > 0
        if xi0 <= 0:
            raise ValueError("exp_linear spacing needs xi0 > 0")
        return [math.exp(math.log(xi0) + (math.log(xi_max) - math.log(xi0)) * u) for u in t]
    raise ValueError(f"unknown spacing {spacing!r}")


def stage_starts(total_steps: int, n: int, initial_fraction: float) -> list[int]:
    """First optimizer step (1-based) of each of the n stages; stage 0 is the initial phase."""
    total = max(1, int(total_steps))
    if n <= 1:
        return [1]
    initial = min(total, max(1, round(total * initial_fraction)))
    length = max(1, math.ceil((total - initial) / (n - 1)))
    return [1] + [initial + 1 + k * length for k in range(n - 1)]


def stage_of(step: int, starts: list[int]) -> int:
    """The stage of optimizer step ``step`` (1-based)."""
    stage = 0
    for k, start in enumerate(starts):
        if step >= start:
            stage = k
    return stage


def staged_lr_lambda(
    total_steps: int, warmup_steps: int, kind: str, starts: list[int], stage_lr: str
) -> Callable[[int], float]:
    """LR multiplier at scheduler step k (0-based; step k+1 uses it) under the sparsifying scheduler."""
    total = max(1, int(total_steps))
    bounds = [*starts, total + 1]

    def span(k: int) -> tuple[int, int]:
        return bounds[k], max(bounds[k], bounds[k + 1] - 1)  # first and last step of stage k

    def warm(length: int) -> int:
        return round(warmup_steps * length / total)

    first, last = span(0)
    initial = lr_lambda(last - first + 1, warm(last - first + 1), kind)
    if stage_lr == "official":
        return initial  # past its end the squeezed schedule stays at its final value (0 for linear/cosine)
    if stage_lr != "restart":
        raise ValueError(f"unknown stage_lr {stage_lr!r}")

    per_stage = []
    for k in range(len(starts)):
        first, last = span(k)
        per_stage.append((first, lr_lambda(last - first + 1, warm(last - first + 1), kind)))

    def factor(k: int) -> float:
        stage = stage_of(k + 1, starts)
        first, fn = per_stage[stage]
        return fn(k + 1 - first)

    return factor
