"""Paired comparison of two classifiers scored on the same rows: is their accuracy gap real?

Two accuracies side by side (0.925 vs 0.921) do not say whether the gap is more than the luck
of which rows the test set happened to hold. Because both models answered the *same* rows, the
question is answered from the rows where they disagree:

- the exact McNemar test: of the discordant rows (one model right, the other wrong), under "no
  difference" each is equally likely to favour either model, so the count favouring one is
  Binomial(discordant, 1/2); scipy's ``binomtest`` gives the exact two-sided p-value;
- a paired percentile bootstrap of the accuracy difference: rows are resampled with one seeded
  numpy Generator and the *same* indices are used for both models, which keeps the pairing
  (resampling each model separately would ignore that they share the hard rows and widen the
  interval).

Pure functions over booleans, so the evaluation job, the CLI, the UI and the tests share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CONFIDENCE = 0.95  # the bootstrap interval's level (fixed: the sentences say "95 % CI")
CHUNK_CELLS = 2_000_000  # resampled indices held at once: bounds memory for large test sets
VERDICTS = ("A better", "B better", "no clear difference")


def _as_bools(values: Sequence[Any], name: str) -> list[bool]:
    out = []
    for i, value in enumerate(values):
        if value is None:  # a row the model did not score must be left out before, not read as wrong
            raise ValueError(f"{name}[{i}] is None: pass only rows both models scored")
        out.append(bool(value))
    return out


def paired_comparison(
    correct_a: Sequence[Any],
    correct_b: Sequence[Any],
    *,
    resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Accuracy difference of model A over model B on the same rows, its 95 % CI and McNemar's p.

    ``correct_a[i]`` / ``correct_b[i]``: whether A / B got row ``i`` right. Returns a JSON-able dict:
    ``rows``, ``accuracy_a``, ``accuracy_b``, ``difference`` (a − b), ``ci_low``/``ci_high`` (paired
    percentile bootstrap, ``resamples`` draws from ``numpy.random.default_rng(seed)``), ``only_a``
    (rows A right and B wrong), ``only_b``, ``p_value`` (exact two-sided McNemar; 1.0 without
    discordant rows) and ``verdict``: "A better" / "B better" when ``p_value < alpha``, else
    "no clear difference". Raises ValueError for sequences of different lengths or of no rows.
    """
    import numpy as np
    from scipy.stats import binomtest

    a, b = _as_bools(correct_a, "correct_a"), _as_bools(correct_b, "correct_b")
    if len(a) != len(b):
        raise ValueError(f"the two models must be scored on the same rows: {len(a)} vs {len(b)} values")
    rows = len(a)
    if rows == 0:
        raise ValueError("a paired comparison needs at least one row scored by both models")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    discordant = only_a + only_b
    p_value = float(binomtest(min(only_a, only_b), discordant, 0.5).pvalue) if discordant else 1.0
    p_value = min(1.0, p_value)

    # Per-row difference (+1 only A right, −1 only B right, 0 agree): resampling rows of this one
    # vector is resampling both models with the same indices.
    diff = np.asarray(a, dtype=np.int8) - np.asarray(b, dtype=np.int8)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    per_chunk = max(1, CHUNK_CELLS // rows)
    for start in range(0, resamples, per_chunk):
        count = min(per_chunk, resamples - start)
        index = rng.integers(0, rows, size=(count, rows))
        means[start : start + count] = diff[index].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    ci_low, ci_high = np.percentile(means, [tail, 100 - tail])

    verdict = ("A better" if only_a > only_b else "B better") if p_value < alpha else "no clear difference"
    return {
        "rows": rows,
        "accuracy_a": sum(a) / rows,
        "accuracy_b": sum(b) / rows,
        "difference": (only_a - only_b) / rows,  # = accuracy_a − accuracy_b, without float cancellation
        "ci_low": float(ci_low),
        "ci_high": float(ci_high),
        "only_a": only_a,
        "only_b": only_b,
        "p_value": p_value,
        "verdict": verdict,
    }


def _signed(value: float) -> str:
    """``+0.004`` / ``−0.011`` (a true minus sign, as a reader expects in prose)."""
    return f"{value:+.3f}".replace("-", "\u2212")


def _p(value: float) -> str:
    return "McNemar p < 0.001" if value < 0.001 else f"McNemar p = {value:.2g}"


def paired_sentence(entry: dict[str, Any], name_a: str, name_b: str) -> str:
    """One plain-English sentence for a :func:`paired_comparison` result (``entry``) of A (``name_a``) vs B."""
    rows = entry["rows"]
    if entry["verdict"] == "A better":
        conclusion = f"{name_a} is better"
    elif entry["verdict"] == "B better":
        conclusion = f"{name_b} is better"
    else:
        conclusion = "no clear difference"
    return (
        f"{name_a} vs {name_b}: {_signed(entry['difference'])} accuracy "
        f"(95 % CI {_signed(entry['ci_low'])} to {_signed(entry['ci_high'])}); "
        f"{name_a} is right on {entry['only_a']} row{'' if entry['only_a'] == 1 else 's'} where {name_b} is wrong, "
        f"and wrong on {entry['only_b']} where it is right ({_p(entry['p_value'])}): "
        f"{conclusion} on these {rows} rows."
    )
