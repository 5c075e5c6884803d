"""Client splits: every row exactly once, deterministic by seed, α controls the skew; the mix chart."""

from __future__ import annotations

import pytest

from studio.federated.charts import client_mix_chart
from studio.federated.partition import column_split, dirichlet_split, iid_split, label_mix

LABELS = ["pos"] * 300 + ["neg"] * 200 + ["neutral"] * 100


def covers_once(parts, n):
    flat = [i for p in parts for i in p]
    return sorted(flat) == list(range(n))


def test_iid_covers_every_row_once_and_is_balanced():
    parts = iid_split(103, 4, seed=1)
    assert covers_once(parts, 103)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == iid_split(103, 4, seed=1)
    assert parts != iid_split(103, 4, seed=2)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 100.0])
def test_dirichlet_covers_every_row_once_and_is_seeded(alpha):
    parts = dirichlet_split(LABELS, 5, alpha, seed=3)
    assert covers_once(parts, len(LABELS))
    assert parts == dirichlet_split(LABELS, 5, alpha, seed=3)
    assert parts != dirichlet_split(LABELS, 5, alpha, seed=4)


def skew(parts):
    """Mean over clients of the share of the client's most common label."""
    shares = []
    for part in parts:
        if part:
            counts = {}
            for i in part:
                counts[LABELS[i]] = counts.get(LABELS[i], 0) + 1
            shares.append(max(counts.values()) / len(part))
    return sum(shares) / len(shares)


def test_small_alpha_skews_the_label_mix():
    severe = sum(skew(dirichlet_split(LABELS, 4, 0.1, seed=s)) for s in range(5)) / 5
    mild = sum(skew(dirichlet_split(LABELS, 4, 100.0, seed=s)) for s in range(5)) / 5
    assert severe > 0.8  # clients hold mostly one label
    assert mild < 0.6  # close to the global mix (pos is 50 %)


def test_column_split_groups_by_named_client():
    values = ["b", "a", "b", "c", "a"]
    names, parts = column_split(values)
    assert names == ["a", "b", "c"]
    assert parts == [[1, 4], [0, 2], [3]]
    with pytest.raises(ValueError, match="not among"):
        column_split(values, clients=["a", "b"])


def test_bad_splits_are_refused():
    with pytest.raises(ValueError):
        iid_split(3, 4)
    with pytest.raises(ValueError):
        dirichlet_split(LABELS, 3, 0.0)


def test_mix_chart_shows_each_clients_labels():
    parts = dirichlet_split(LABELS, 3, 0.5, seed=0)
    mix = label_mix(LABELS, parts)
    assert sum(sum(c.values()) for c in mix.values()) == len(LABELS)
    fig = client_mix_chart(mix)
    assert {trace.name for trace in fig.data} == {"pos", "neg", "neutral"}
    by_label = {trace.name: list(trace.y) for trace in fig.data}
    assert by_label["pos"] == [mix[c]["pos"] for c in mix]
