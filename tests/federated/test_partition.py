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


def test_label_share_split_gives_ffa_loras_three_client_mix():
    from studio.federated.partition import FFA_LABEL_SHARES, label_share_split

    labels = ["neg"] * 300 + ["pos"] * 300  # balanced binary task: the stated mixes hold exactly
    parts = label_share_split(labels, FFA_LABEL_SHARES, seed=2)
    assert covers_once(parts, len(labels))
    assert [len(p) for p in parts] == [200, 200, 200]
    mix = label_mix(labels, parts)
    assert [mix[f"client {k}"] for k in (1, 2, 3)] == [
        {"neg": 20, "pos": 180},
        {"neg": 180, "pos": 20},
        {"neg": 100, "pos": 100},
    ]
    assert parts == label_share_split(labels, FFA_LABEL_SHARES, seed=2)
    assert parts != label_share_split(labels, FFA_LABEL_SHARES, seed=3)


def test_label_share_split_keeps_every_row_of_unbalanced_classes():
    from studio.federated.partition import label_share_split

    labels = ["a"] * 70 + ["b"] * 30
    parts = label_share_split(labels, [[1, 0], [1, 3]], seed=0)
    assert covers_once(parts, 100)
    mix = label_mix(labels, parts)
    assert mix["client 1"] == {"a": 35, "b": 0} and mix["client 2"] == {"a": 35, "b": 30}


def test_label_share_split_refuses_shares_that_do_not_fit():
    from studio.federated.partition import label_share_split

    with pytest.raises(ValueError, match="3 classes"):
        label_share_split(LABELS, [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="share is 0 everywhere"):
        label_share_split(["a", "b"] * 5, [[1, 0], [1, 0]])


def test_split_rows_with_label_shares_follows_the_request():
    from studio.federated.partition import split_rows
    from studio.schema import FederatedRequest

    rows = [{"text": f"row {i}", "label": "neg" if i % 2 else "pos"} for i in range(200)]
    request = FederatedRequest(dataset_id=1, base_model="m", clients=3, split="label_shares", seed=4)
    val, parts = split_rows(rows, request)
    assert sorted(val + [i for p in parts for i in p]) == list(range(200))
    positive = [sum(rows[i]["label"] == "pos" for i in p) / len(p) for p in parts]
    # FFA-LoRA's default mixes, up to the held-out rows tilting the balance a little
    assert positive[0] > 0.8 and positive[1] < 0.2 and 0.4 < positive[2] < 0.6
    with pytest.raises(ValueError, match="one row per client"):
        FederatedRequest(dataset_id=1, base_model="m", clients=4, split="label_shares")
