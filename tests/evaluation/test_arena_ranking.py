"""The Arena's Bradley–Terry leaderboard and pair drawing, on simulated votes with known strengths."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from studio.evaluation.arena import ELO_SCALE, fit_bradley_terry, leaderboard, pick_pair, win_matrix

# Known strengths (log-odds); "base" is the anchor at 1000.
TRUE = {"base": 0.0, "strong": 1.2, "good": 0.5, "weak": -0.7, "bad": -1.4}


def true_score(name: str) -> float:
    return 1000.0 + ELO_SCALE * (TRUE[name] - TRUE["base"])


def simulate(rng: np.random.Generator, votes: int, tie_band: float = 0.0) -> list[tuple[str, str, str]]:
    """Votes drawn from the Bradley–Terry model on TRUE; a tie when the draw falls within ``tie_band`` of p."""
    names = list(TRUE)
    out = []
    for _ in range(votes):
        i, j = rng.choice(len(names), 2, replace=False)
        p = 1.0 / (1.0 + math.exp(-(TRUE[names[i]] - TRUE[names[j]])))
        u = rng.random()
        winner = "tie" if abs(u - p) < tie_band else ("a" if u < p else "b")
        out.append((names[i], names[j], winner))
    return out


def test_recovers_the_order_of_known_strengths_and_anchors_the_base():
    board = leaderboard(simulate(np.random.default_rng(3), 1500), anchor="base", resamples=100, seed=1)
    assert [s.contestant for s in board] == sorted(TRUE, key=TRUE.get, reverse=True)
    by_name = {s.contestant: s for s in board}
    assert by_name["base"].score == by_name["base"].low == by_name["base"].high == 1000.0
    for name, standing in by_name.items():
        assert abs(standing.score - true_score(name)) < 60, (name, standing.score, true_score(name))
        assert standing.low <= standing.score <= standing.high
        assert standing.wins + standing.ties + standing.losses == standing.games
    assert sum(s.games for s in board) == 2 * 1500


def test_bootstrap_intervals_cover_the_true_scores():
    """Over 8 independent simulated arenas, the 95 % intervals of the 4 non-anchor contestants hold the truth."""
    covered = total = 0
    widths = []
    for trial in range(8):
        votes = simulate(np.random.default_rng(100 + trial), 400)
        for s in leaderboard(votes, anchor="base", resamples=200, seed=trial):
            if s.contestant == "base":
                continue
            total += 1
            covered += s.low <= true_score(s.contestant) <= s.high
            widths.append(s.high - s.low)
    assert covered / total >= 0.85, (covered, total)  # nominal 95 %; 32 intervals
    assert 20 < np.median(widths) < 300  # informative, neither degenerate nor vacuous


def test_intervals_shrink_with_more_votes():
    few = leaderboard(simulate(np.random.default_rng(7), 100), anchor="base", resamples=100)
    many = leaderboard(simulate(np.random.default_rng(7), 1600), anchor="base", resamples=100)
    width = {s.contestant: s.high - s.low for s in few}
    for s in many:
        if s.contestant != "base":
            assert s.high - s.low < width[s.contestant] / 2, s.contestant


def test_ties_count_half_to_each_side():
    only_ties = leaderboard([("base", "x", "tie")] * 10, anchor="base", resamples=50)
    assert {s.contestant: (s.ties, s.wins, s.losses) for s in only_ties} == {"base": (10, 0, 0), "x": (10, 0, 0)}
    assert all(abs(s.score - 1000.0) < 1e-6 for s in only_ties)
    # 6 wins and 4 losses vs 6 wins, 2 ties, 2 losses: the ties pull x up by exactly one more half win per tie.
    wins_only = {
        s.contestant: s.score for s in leaderboard([("x", "base", "a")] * 6 + [("x", "base", "b")] * 4, "base")
    }
    with_ties = leaderboard([("x", "base", "a")] * 6 + [("x", "base", "tie")] * 2 + [("x", "base", "b")] * 2, "base")
    assert 1000 < wins_only["x"] < {s.contestant: s.score for s in with_ties}["x"]
    # Half a win per tie: 2 ties are the same evidence as 1 win + 1 loss.
    same = leaderboard([("x", "base", "a")] * 7 + [("x", "base", "b")] * 3, "base")
    assert {s.contestant: s.score for s in with_ties}["x"] == pytest.approx({s.contestant: s.score for s in same}["x"])


def test_a_contestant_that_won_every_game_gets_a_finite_score():
    votes = (
        [("champ", "base", "a")] * 8 + [("base", "champ", "b")] * 7 + [("other", "base", "a"), ("base", "other", "a")]
    )
    board = {s.contestant: s for s in leaderboard(votes, anchor="base", resamples=100)}
    champ = board["champ"]
    assert champ.wins == champ.games == 15
    assert all(math.isfinite(v) for v in (champ.score, champ.low, champ.high))
    assert champ.score > board["other"].score + 300  # clearly on top, but the prior keeps it finite
    assert champ.score < 1000 + ELO_SCALE * 10  # the weak prior keeps it below 10 log-odds


def test_fit_matches_the_closed_form_for_two_players_without_prior():
    """Two players, w wins of 0 over 1 and l of 1 over 0: θ0 − θ1 = log(w / l) (prior negligible)."""
    wins = win_matrix(2, np.array([0, 1]), np.array([1, 0]), np.array([0, 0]), weights=np.array([30.0, 10.0]))
    theta = fit_bradley_terry(wins, prior_sd=1e6)
    assert theta[0] - theta[1] == pytest.approx(math.log(3.0), abs=1e-6)


def test_mean_anchor_without_a_base_and_contestants_without_votes():
    board = leaderboard([("x", "y", "a")] * 3 + [("x", "y", "b")], contestants=["z"], resamples=20)
    scores = {s.contestant: s.score for s in board}
    assert sum(scores.values()) / 3 == pytest.approx(1000.0)
    assert {s.contestant: s.games for s in board} == {"x": 4, "y": 4, "z": 0}
    assert leaderboard([]) == []
    with pytest.raises(ValueError, match="unknown winner"):
        leaderboard([("x", "y", "left")])


def test_bootstrap_is_reproducible_with_a_seed():
    votes = simulate(np.random.default_rng(11), 200)
    assert leaderboard(votes, "base", seed=5) == leaderboard(votes, "base", seed=5)
    assert leaderboard(votes, "base", seed=5) != leaderboard(votes, "base", seed=6)  # intervals differ


def test_pick_pair_draws_two_distinct_contestants_uniformly_and_reproducibly():
    contestants = ["base", "adapter:1", "adapter:2", "adapter:3"]
    draws = [pick_pair(contestants, random.Random(i)) for i in range(600)]
    assert all(a != b for a, b in draws)
    assert draws == [pick_pair(contestants, random.Random(i)) for i in range(600)]
    counts = {pair: draws.count(pair) for pair in set(draws)}
    assert len(counts) == 12  # every ordered pair: the base is a contestant, in both positions
    assert min(counts.values()) > 20
    assert sum(1 for a, b in draws if "base" in (a, b)) > 200  # about half the battles involve the base
    assert pick_pair(["base", "base", "adapter:1"], random.Random(0)) in {("base", "adapter:1"), ("adapter:1", "base")}
    with pytest.raises(ValueError, match="at least two"):
        pick_pair(["base", "base"], random.Random(0))
