"""How weight changes ΔW of several adapters become one: weighted sum or TIES-merging.

Both work on dense ΔW of one module at a time, so they apply to any adapter PEFT can
merge (LoRA at any rank, DoRA, AdaLoRA, ...); the result is factorised into a LoRA
afterwards (:func:`studio.variants.lora_export.factorise`).

TIES-merging (Yadav et al., 2023, "Resolving Interference When Merging Models"), per
module: (1) trim: each adapter keeps only its ``density`` share of largest-magnitude
changes, the rest become 0; (2) elect: every weight gets the sign of the summed trimmed
changes (the side with more total mass wins); (3) disjoint mean: the average of the
changes that agree with the elected sign, counting only adapters that changed that
weight. The weights multiply each adapter's changes before the election, so a weight
of 1 each is the paper's method with λ = 1 and a negative weight subtracts an adapter.

DARE (Yu et al., 2024, "Language Models are Super Mario"): each adapter's changes are
dropped at random, keeping a ``density`` share, and the kept ones are divided by
``density`` so that the expected change is unchanged; then a weighted sum
(``dare_linear``) or TIES' election and disjoint mean (``dare_ties``). The drops are
seeded by (request seed, module name, adapter position), so a merge is reproducible and
does not depend on the order modules are processed in.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

# The methods that merge dense ΔW (registered in studio.merging.registry with merge_dense_module).
METHODS = ("linear", "ties", "dare_linear", "dare_ties")


def merge_dense_module(request: Any, changes: Any, module: str, weights: Sequence[float]) -> tuple[Any, Any, float]:
    """(B′, A′, relative error) of ``module``: the parents' ΔW merged by ``request.method``, then factorised.

    The rank is ``request.rank`` or, by default, the sum of the parents' ranks there (exact for a
    linear merge of LoRAs; :mod:`studio.merging.lowrank`).
    """
    from studio.merging.lowrank import low_rank_factors

    deltas, ranks = changes.module(module)  # a parent that does not adapt a module changes it by nothing
    merged = merge_deltas(request.method, deltas, weights, request.density, request.seed, module)
    b, a, error, _ = low_rank_factors(merged, request.rank or sum(ranks))
    return b, a, error


def linear_merge(deltas: Sequence[Any], weights: Sequence[float]) -> Any:
    """Σ wᵢ ΔWᵢ."""
    _check(deltas, weights)
    total = deltas[0] * weights[0]
    for delta, weight in zip(deltas[1:], weights[1:], strict=True):
        total = total + delta * weight
    return total


def trim_to_density(delta: Any, density: float) -> Any:
    """``delta`` with all but its ``ceil(density · size)`` largest-magnitude entries set to 0."""
    import torch

    if density >= 1.0:
        return delta.clone()
    keep = max(1, math.ceil(density * delta.numel()))
    flat = delta.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.abs().topk(keep).indices] = True
    return (flat * mask).view_as(delta)


def drop_and_rescale(delta: Any, density: float, generator: Any) -> Any:
    """DARE: each entry kept with probability ``density`` and divided by it, else 0."""
    import torch

    if density >= 1.0:
        return delta.clone()
    kept = torch.rand(delta.shape, generator=generator) < density
    return delta * kept / density


def ties_merge(deltas: Sequence[Any], weights: Sequence[float], density: float, pruned: bool = False) -> Any:
    """TIES-merging of ``deltas`` (trim to ``density``, elect signs, disjoint mean), weights applied first.

    ``pruned``: the deltas are already sparse (DARE dropped them): skip the trim.
    """
    import torch

    _check(deltas, weights)
    kept = deltas if pruned else [trim_to_density(d, density) for d in deltas]
    stacked = torch.stack([d * w for d, w in zip(kept, weights, strict=True)])
    elected = torch.sign(stacked.sum(dim=0))
    agrees = (torch.sign(stacked) == elected) & (stacked != 0)
    count = agrees.sum(dim=0).clamp(min=1)
    return (stacked * agrees).sum(dim=0) / count


def merge_deltas(
    method: str, deltas: Sequence[Any], weights: Sequence[float], density: float = 1.0, seed: int = 0, module: str = ""
) -> Any:
    """One module's merged ΔW by ``method`` (see :data:`METHODS`); ``seed`` and ``module`` seed DARE's drops."""
    if method == "linear":
        return linear_merge(deltas, weights)
    if method == "ties":
        return ties_merge(deltas, weights, density)
    if method in ("dare_linear", "dare_ties"):
        dropped = [drop_and_rescale(d, density, dare_generator(seed, module, i)) for i, d in enumerate(deltas)]
        return linear_merge(dropped, weights) if method == "dare_linear" else ties_merge(dropped, weights, 1.0, True)
    raise ValueError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")


def dare_generator(seed: int, module: str, position: int) -> Any:
    """The random stream of one adapter's drops in one module (independent of processing order)."""
    import torch

    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(module.encode()) * 31 + position) % 2**63)


def _check(deltas: Sequence[Any], weights: Sequence[float]) -> None:
    if not deltas or len(deltas) != len(weights):
        raise ValueError(f"{len(deltas)} weight changes for {len(weights)} weights")
    shapes = {tuple(d.shape) for d in deltas}
    if len(shapes) != 1:
        raise ValueError(f"the weight changes of one module differ in shape: {sorted(shapes)}")
