"""The blind Arena's maths: pick two contestants, and rank them by Bradley–Terry from pairwise votes.

Pure functions on plain values (numpy only), shared by the playground's Arena service and its tests.

**Model.** Bradley–Terry: contestant ``i`` beats ``j`` with probability ``σ(θ_i − θ_j)``. A tie
counts as half a win for each side (the simple convention, rather than the Davidson or
Rao–Kupper tie parameter: with few votes an extra parameter is poorly determined, and half a win
keeps the likelihood concave and the fit a logistic regression). The strengths θ are the
maximum a-posteriori estimate under a weak Gaussian prior ``θ ~ N(0, PRIOR_SD²)`` (natural-log
odds units): without it a contestant that won every game would have θ = +∞; with it its score is
finite, and with a few dozen votes per contestant the prior moves scores by a few points only.
The fit is Newton's method on the concave log-posterior (exact gradient and Hessian).

**Scores.** ``1000 + 400·log10(e)·(θ_i − θ_base)``: Elo-like points, the base model (no adapter)
anchored at 1000, so 1100 means "wins about 64 % against the bare base". When the base is not a
contestant the mean is anchored at 1000 instead.

**Intervals.** 95 % percentile bootstrap over votes: the votes are resampled with replacement
(``resamples`` times, seeded), the model refitted on each resample and anchored the same way.
The base's own interval is therefore exactly [1000, 1000]: every interval says how sure we are
of a contestant's distance from the base.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

WINNERS = ("a", "b", "tie")
ELO_SCALE = 400.0 / math.log(10.0)  # natural-log odds -> Elo points
ANCHOR_SCORE = 1000.0
PRIOR_SD = 4.0  # log-odds; weak: ~700 Elo points
RESAMPLES = 200


@dataclass(frozen=True)
class Standing:
    """One contestant's row of the leaderboard; ``low``/``high`` bound the 95 % bootstrap interval."""

    contestant: str
    score: float
    low: float
    high: float
    games: int
    wins: int
    ties: int
    losses: int


def pick_pair(contestants: Sequence[str], rng: random.Random | None = None) -> tuple[str, str]:
    """Two distinct contestants in random order (A, B), uniformly over pairs.

    ``rng`` is injectable for tests; duplicates in ``contestants`` count once.
    """
    pool = list(dict.fromkeys(contestants))
    if len(pool) < 2:
        raise ValueError("the Arena needs at least two contestants (the base model and one adapter)")
    a, b = (rng or random.SystemRandom()).sample(pool, 2)
    return a, b


def win_matrix(
    n: int, a: np.ndarray, b: np.ndarray, winner: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """``W[i, j]``: wins of ``i`` over ``j`` (ties half to each) from votes coded as indices.

    ``winner`` holds 0 (A won), 1 (B won) or 2 (tie); ``weights`` counts each vote that many times (bootstrap).
    """
    w = np.ones(len(a)) if weights is None else np.asarray(weights, dtype=float)
    out = np.zeros((n, n))
    a_score = np.where(winner == 0, 1.0, np.where(winner == 2, 0.5, 0.0)) * w
    np.add.at(out, (a, b), a_score)
    np.add.at(out, (b, a), w - a_score)
    return out


def fit_bradley_terry(wins: np.ndarray, prior_sd: float = PRIOR_SD, theta0: np.ndarray | None = None) -> np.ndarray:
    """MAP strengths θ (log-odds) from a win matrix, by Newton's method; see the module docstring."""
    n = wins.shape[0]
    games = wins + wins.T
    precision = 1.0 / prior_sd**2
    theta = np.zeros(n) if theta0 is None else np.array(theta0, dtype=float)
    won = wins.sum(axis=1)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))  # P(i beats j)
        grad = won - (games * p).sum(axis=1) - precision * theta
        curvature = games * p * (1.0 - p)
        hessian = curvature - np.diag(curvature.sum(axis=1) + precision)  # negative definite
        step = np.linalg.solve(hessian, grad)
        theta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return theta


def _scores(theta: np.ndarray, anchor: int | None) -> np.ndarray:
    """θ as Elo-like points: the anchor contestant (or the mean when None) at ANCHOR_SCORE."""
    reference = theta[..., anchor] if anchor is not None else theta.mean(axis=-1)
    return ANCHOR_SCORE + ELO_SCALE * (theta - np.expand_dims(reference, -1))


def leaderboard(
    votes: Iterable[tuple[str, str, str]],
    anchor: str | None = None,
    contestants: Sequence[str] = (),
    resamples: int = RESAMPLES,
    seed: int = 0,
    prior_sd: float = PRIOR_SD,
) -> list[Standing]:
    """Standings, best first, from ``(contestant A, contestant B, winner in "a"/"b"/"tie")`` votes.

    ``anchor`` (the base model's name among the contestants) scores 1000; ``contestants`` adds
    ones without votes yet (scored at the prior, shown with 0 games). Intervals come from a
    ``resamples``-fold bootstrap over votes with a seeded generator.
    """
    votes = list(votes)
    names = list(dict.fromkeys([*([anchor] if anchor else []), *contestants, *(c for v in votes for c in v[:2])]))
    if not names:
        return []
    index = {name: i for i, name in enumerate(names)}
    for _, _, winner in votes:
        if winner not in WINNERS:
            raise ValueError(f"unknown winner {winner!r}; expected one of {WINNERS}")
    a = np.array([index[v[0]] for v in votes], dtype=int)
    b = np.array([index[v[1]] for v in votes], dtype=int)
    outcome = np.array([WINNERS.index(v[2]) for v in votes], dtype=int)
    n = len(names)
    anchor_index = index[anchor] if anchor else None

    theta = fit_bradley_terry(win_matrix(n, a, b, outcome), prior_sd)
    scores = _scores(theta, anchor_index)
    low, high = scores.copy(), scores.copy()
    if votes and resamples > 0:
        rng = np.random.default_rng(seed)
        boot = np.empty((resamples, n))
        for r in range(resamples):
            counts = np.bincount(rng.integers(0, len(votes), len(votes)), minlength=len(votes))
            boot[r] = fit_bradley_terry(win_matrix(n, a, b, outcome, counts), prior_sd, theta0=theta)
        low, high = np.percentile(_scores(boot, anchor_index), [2.5, 97.5], axis=0)

    standings = []
    for i, name in enumerate(names):
        as_a, as_b = a == i, b == i
        wins = int(np.sum(as_a & (outcome == 0)) + np.sum(as_b & (outcome == 1)))
        ties = int(np.sum((as_a | as_b) & (outcome == 2)))
        games = int(np.sum(as_a | as_b))
        standings.append(
            Standing(name, float(scores[i]), float(low[i]), float(high[i]), games, wins, ties, games - wins - ties)
        )
    return sorted(standings, key=lambda s: (-s.score, s.contestant))
