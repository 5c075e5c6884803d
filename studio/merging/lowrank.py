"""The merged ΔW of one module as LoRA factors B′A′ at a given rank, without a full SVD where none is needed.

A full SVD costs O(m·n·min(m, n)): fine for a 135M model (about 0.1 s per module), hours
for a 7B one (4096 × 11008 per MLP matrix, 224 of them). But a merge's ΔW usually has a
rank no larger than the sum of its parents' ranks, and then a randomized range finder
(Halko, Martinsson & Tropp, 2011) recovers it exactly in O(m·n·k):

1. Y = ΔW Ω for a seeded Gaussian Ω with ``rank + OVERSAMPLE`` columns; Q = orth(Y);
2. if ‖Q Qᵀ ΔW‖ = ‖ΔW‖ (to :data:`EXACT_TOLERANCE`), the columns of Q span ΔW entirely,
   and the SVD of the small matrix Qᵀ ΔW gives ΔW's singular triplets: the truncation
   to ``rank`` is the best one (Eckart–Young), like a full SVD's;
3. otherwise ΔW has more directions than that (a TIES result, a DoRA parent): a full SVD
   where it is affordable (:data:`FULL_SVD_ELEMENTS`), else the same range finder with
   power iterations, which is close to the best and whose actual error is reported.

The error reported is always exact for the factors written: ‖ΔW − B′A′‖_F / ‖ΔW‖_F.
"""

from __future__ import annotations

import math
from typing import Any

from studio.variants.lora_export import RANK_TOLERANCE, factorise

OVERSAMPLE = 8
EXACT_TOLERANCE = 1e-10  # share of ‖ΔW‖² a subspace may miss and still count as the whole of ΔW
FULL_SVD_ELEMENTS = 8_000_000  # a float64 SVD up to about 2800 × 2800 takes seconds on a CPU core
POWER_ITERATIONS = 4


def low_rank_factors(delta: Any, rank: int, seed: int = 0) -> tuple[Any, Any, float, str]:
    """(B′, A′, relative Frobenius error, how) with B′A′ ≈ ``delta`` at rank ≤ ``rank``.

    ``how`` says which path gave the factors: "range" (exact, from the range finder),
    "svd" (a full SVD) or "randomized" (range finder with power iterations: near-best).
    """
    import torch

    work = delta.detach().to(device="cpu", dtype=torch.float64)
    m, n = work.shape
    columns = rank + OVERSAMPLE
    if columns >= min(m, n):
        b, a, error = factorise(work, rank)
        return b, a, error, "svd"
    total = float(work.square().sum())
    if total == 0.0:
        return work.new_zeros(m, 0).float(), work.new_zeros(0, n).float(), 0.0, "range"
    generator = torch.Generator().manual_seed(seed)
    omega = torch.randn(n, columns, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(work @ omega)
    small = q.T @ work
    if float(small.square().sum()) >= total * (1.0 - EXACT_TOLERANCE):
        return (*_truncate(q, small, rank, total), "range")
    if m * n <= FULL_SVD_ELEMENTS:
        b, a, error = factorise(work, rank)
        return b, a, error, "svd"
    for _ in range(POWER_ITERATIONS):
        z, _ = torch.linalg.qr(work.T @ q)
        q, _ = torch.linalg.qr(work @ z)
    return (*_truncate(q, q.T @ work, rank, total), "randomized")


def _truncate(q: Any, small: Any, rank: int, total: float) -> tuple[Any, Any, float]:
    """Factors of the projection Q·small truncated to ``rank`` (singular values split evenly), and its error."""
    import torch

    u, s, vh = torch.linalg.svd(small, full_matrices=False)
    numerical = int((s > s[0] * RANK_TOLERANCE).sum()) if len(s) and s[0] > 0 else 0
    keep = min(rank, numerical)
    root = s[:keep].sqrt()
    b = ((q @ u[:, :keep]) * root).to(torch.float32)
    a = (root[:, None] * vh[:keep]).to(torch.float32)
    # Q·U_k is orthonormal, so B′A′ is the orthogonal projection of ΔW onto it: the residual's
    # squared norm is ‖ΔW‖² minus what the kept singular values hold.
    missed = max(0.0, total - float(s[:keep].square().sum()))
    return b, a, math.sqrt(missed / total)
