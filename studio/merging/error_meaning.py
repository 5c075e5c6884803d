"""What a merge's reported error means for the adapter it saved, in words.

The error is the relative Frobenius error ε = ‖ΔW − B′A′‖_F / ‖ΔW‖_F of the saved LoRA
B′A′ against the exact merged weight change ΔW, per module (the job reports the largest).
Two readings justify the thresholds below:

- ε² is the share of the merged change's energy (sum of squared singular values) that the
  rank cut dropped: ε = 0.1 drops 1 %, ε = 0.3 drops 9 %, ε = 0.5 drops a quarter.
- for inputs with no preferred direction (E[xxᵀ] ∝ I), E‖(ΔW − B′A′)x‖² / E‖ΔWx‖² = ε²
  exactly: ε is the RMS relative error of the adapter's effect on that layer's output.

So below 10 % the saved LoRA changes each layer's output almost exactly as the merge does
(what it drops is at most 1 % of the change's energy); 10–30 % is a visible but partial
loss worth checking with an evaluation; above 30 % (over 9 % of the energy gone, the
layer's adapter effect off by a third or more) the saved LoRA is a different adapter, and
the remedy is a higher rank (for a linear merge of LoRAs the default rank, the sum of the
parents' ranks, is exact).
"""

from __future__ import annotations

EXACT_ERROR = 1e-4  # a merge whose every module is within this relative error is reported as exact
CLOSE_ERROR = 0.10  # ≤ 1 % of the change's energy dropped
LOOSE_ERROR = 0.30  # > 9 % dropped: the layer's adapter effect is off by a third or more


def merge_error_verdict(error: float | None) -> str:
    """A short verdict for tables: 'exact', 'close', 'approximate' or 'rank too low'."""
    if error is None:
        return ""
    if error < EXACT_ERROR:
        return "exact"
    if error < CLOSE_ERROR:
        return "close"
    if error < LOOSE_ERROR:
        return "approximate"
    return "rank too low"


def merge_error_sentence(error: float | None, rank: int | None = None) -> str:
    """One sentence on what the largest relative error means for the saved adapter, and what to do."""
    if error is None:
        return ""
    share = f"{error:.0%}" if error >= 0.01 else f"{error:.1%}" if error >= 0.001 else f"{error:.0e}"
    within = f"the saved LoRA reproduces the exact merge to within {share} (largest relative error {error:.1e})"
    raise_rank = (
        f"raise the rank (now {rank}; the Rank field, `--rank`)"
        if rank
        else "raise the rank (the Rank field, `--rank`)"
    )
    verdict = merge_error_verdict(error)
    if verdict == "exact":
        return f"Exact: {within}, floating-point rounding only."
    if verdict == "close":
        return (
            f"Close: {within}; the rank cut drops at most {error**2:.1%} of the change, so expect the same behaviour."
        )
    if verdict == "approximate":
        return (
            f"Approximate: {within}; the rank cut drops {error**2:.0%} of the change. "
            f"Evaluate it against its parents, or {raise_rank} for a closer copy."
        )
    return f"Rank too low: {within}; the rank cut drops {error**2:.0%} of the change. {raise_rank[0].upper()}{raise_rank[1:]}."
