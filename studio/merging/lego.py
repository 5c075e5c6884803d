"""LoRA-LEGO: several LoRAs merged by clustering their rank units (Minimal Semantic Units) into one rank-k LoRA.

A LoRA's change is a sum over its rank units, ``ΔW = s Σ_i b_i a_iᵀ`` (``a_i`` a row of A,
``b_i`` the matching column of B). Units can be permuted without changing ΔW, and
concatenating two LoRAs' units adds their changes, so the units of all parents can be
pooled per module, clustered into k groups, and the cluster centres used as the units of
one rank-k LoRA. Per module (spec §1):

1. fold each parent's scale s_j (alpha/r, or alpha/√r with rsLoRA, as PEFT computes it) and
   merge weight w_j into its units: with ``c_j = w_j s_j``, ``a ← √|c_j| a`` and
   ``b ← sign(c_j) √|c_j| b``; units whose b is all zero are dropped;
2. each unit is the vector ``u = concat(a, b)``;
3. k-means (scikit-learn: Euclidean, k-means++, :data:`N_INIT` restarts, :data:`MAX_ITER`
   iterations, ``random_state`` = the request's seed) with ``k' = min(k, distinct units)``;
   a centre is the mean of its members;
4. parameter reweighting (on by default): each centre is scaled to its members' mean norm,
   since averaging units that point in somewhat different directions shrinks the norm;
5. the centres split back into rows of A′ and columns of B′;
6. output reweighting: B′ is multiplied by ``γ = √(r̄ / k')`` (r̄ the parents' mean rank in
   this module; the spec marks this choice [verify]), or 1 (``"none"``), or a given number.

k defaults to r̄ (rounded half up); a k below the number of units prunes. Choices of ours
where the spec is silent: the pool is sorted before clustering, so the result does not
depend on the order of the parents or of their units (k-means++ would otherwise start from
other points); k' counts *distinct* units, so merging an adapter with itself (every unit
twice) at k = r gives back each unit rather than an empty cluster; scikit-learn re-seeds an
empty cluster from the point farthest from its centre during the iterations (spec step 7),
and a cluster still empty at the end is left out (the module's rank is then below k').

The result is written as a standard PEFT LoRA at scale 1 (lora_alpha = r), so the folded
scale and γ are carried by the factors themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

N_INIT = 10
MAX_ITER = 300
OUTPUT_REWEIGHTS = ("sqrt_r_over_k", "none")


def default_k(ranks: Sequence[int]) -> int:
    """The paper's default number of clusters: the mean rank of the parents, rounded half up (at least 1)."""
    return max(1, math.floor(sum(ranks) / len(ranks) + 0.5))


def fold_units(sources: Sequence[tuple[Any, Any, float] | None], weights: Sequence[float]) -> tuple[Any, int]:
    """(units, d_in): every parent's rank units folded with ``c = weight · scale``, one row ``concat(a, b)`` each.

    ``sources`` holds (A (r × d_in), B (d_out × r), scale) per parent, None where it does not
    adapt the module; units with an all-zero b (a zero weight, a pruned unit) are dropped.
    Rows are float64, in parent order.
    """
    import torch

    rows, d_in = [], None
    for source, weight in zip(sources, weights, strict=True):
        if source is None:
            continue
        a, b, scale = source
        d_in = a.shape[1]
        c = float(weight) * float(scale)
        root = math.sqrt(abs(c))
        a_folded = a.detach().to("cpu", torch.float64) * root
        b_folded = b.detach().to("cpu", torch.float64).T * (root if c >= 0 else -root)  # (r, d_out)
        keep = (b_folded != 0).any(dim=1)
        rows.append(torch.cat([a_folded, b_folded], dim=1)[keep])
    if d_in is None:
        raise ValueError("no parent adapts this module")
    return torch.cat(rows), d_in


def cluster_units(units: Any, k: int, seed: int = 0, n_init: int = N_INIT) -> tuple[Any, int]:
    """(labels, k'): k-means of the rows of ``units`` into ``k' = min(k, distinct rows)`` clusters.

    ``labels`` is a LongTensor with one cluster index per row.
    """
    import numpy as np
    import torch
    from sklearn.cluster import KMeans

    points = units.numpy()
    distinct = int(np.unique(points, axis=0).shape[0])
    clusters = max(1, min(int(k), distinct))
    if clusters == 1:
        return torch.zeros(len(points), dtype=torch.long), 1
    kmeans = KMeans(n_clusters=clusters, init="k-means++", n_init=n_init, max_iter=MAX_ITER, random_state=seed)
    return torch.from_numpy(kmeans.fit_predict(points).astype(np.int64)), clusters


def centroids(units: Any, labels: Any, param_reweight: bool = True) -> Any:
    """One centre per non-empty cluster (member mean), rescaled to the members' mean norm with ``param_reweight``."""
    import torch

    out = []
    for cluster in labels.unique(sorted=True).tolist():
        members = units[labels == cluster]
        centre = members.mean(dim=0)
        norm = float(centre.norm())
        if param_reweight and norm > 0:
            centre = centre * (float(members.norm(dim=1).mean()) / norm)
        out.append(centre)
    return torch.stack(out) if out else units.new_zeros(0, units.shape[1])


def output_gamma(output_reweight: str | float, mean_rank: float, clusters: int) -> float:
    """γ that multiplies B′: √(r̄ / k') for "sqrt_r_over_k", 1 for "none", else the number given."""
    if output_reweight == "sqrt_r_over_k":
        return math.sqrt(mean_rank / clusters)
    if output_reweight == "none":
        return 1.0
    if isinstance(output_reweight, int | float) and not isinstance(output_reweight, bool):
        return float(output_reweight)
    raise ValueError(f"output_reweight: {output_reweight!r} is neither a number nor one of {OUTPUT_REWEIGHTS}")


def lego_merge(
    sources: Sequence[tuple[Any, Any, float] | None],
    weights: Sequence[float],
    k: int | None = None,
    *,
    param_reweight: bool = True,
    output_reweight: str | float = "sqrt_r_over_k",
    seed: int = 0,
    n_init: int = N_INIT,
) -> tuple[Any, Any]:
    """(B′ (d_out × k'), A′ (k' × d_in)), fp32, of one module merged by LoRA-LEGO; ΔW′ = B′ A′ (scale 1).

    ``sources``: (A, B, scale) per parent or None; ``k``: clusters (default: the parents' mean rank).
    """
    import numpy as np
    import torch

    ranks = [source[0].shape[0] for source in sources if source is not None]
    units, d_in = fold_units(sources, weights)
    if len(units) == 0:  # every unit dropped: the merge changes nothing here
        d_out = next(s[1].shape[0] for s in sources if s is not None)
        return torch.zeros(d_out, 0), torch.zeros(0, d_in)
    # Canonical order (rows sorted lexicographically): the same pool in any order clusters the same.
    order = torch.from_numpy(np.lexsort(units.numpy().T[::-1]).copy())
    units = units[order]
    labels, clusters = cluster_units(units, k or default_k(ranks), seed, n_init)
    centres = centroids(units, labels, param_reweight)
    gamma = output_gamma(output_reweight, sum(ranks) / len(ranks), clusters)
    a = centres[:, :d_in]
    b = centres[:, d_in:].T * gamma
    return b.to(torch.float32).contiguous(), a.to(torch.float32).contiguous()


def merge_module(request: Any, changes: Any, module: str, weights: Sequence[float]) -> tuple[Any, Any, float]:
    """The merge job's entry (see :mod:`studio.merging.registry`): LEGO of one module, written exactly (error 0)."""
    b, a = lego_merge(
        changes.factors(module),
        weights,
        request.rank,
        param_reweight=request.param_reweight,
        output_reweight=request.output_reweight,
        seed=request.seed,
    )
    return b, a, 0.0
