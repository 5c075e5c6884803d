"""Split one dataset's rows among K simulated clients (spec composition.md §3, "Non-IID splits").

Every function returns ``K`` sorted lists of row indices that together cover ``range(n)``
exactly once, and is a pure function of its arguments (seeded; no global RNG state).

- :func:`iid_split`: a seeded shuffle dealt round-robin (client sizes differ by at most one).
- :func:`dirichlet_split`: per class c draw q_c ~ Dir(α·1_K) and split that class's rows by
  q_c; small α (0.1) gives clients dominated by few labels, large α approaches IID.
- :func:`label_share_split`: fixed label proportions per client, e.g. FFA-LoRA's 3-client split
  [0.1, 0.9], [0.9, 0.1], [0.5, 0.5] of a binary task.
- :func:`column_split`: a column already names each row's client (real sites, or a category).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np


def iid_split(n: int, clients: int, seed: int = 0) -> list[list[int]]:
    """Rows shuffled by ``seed`` and dealt to ``clients`` in turn."""
    _check(n, clients)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [sorted(order[k::clients]) for k in range(clients)]


def dirichlet_split(labels: Sequence[Any], clients: int, alpha: float, seed: int = 0) -> list[list[int]]:
    """Per class c, q_c ~ Dir(α·1_K) and the class's (shuffled) rows are cut at the cumulative q_c.

    Classes are taken in sorted order of their string form so the draw does not depend on
    the order rows arrive in.
    """
    _check(len(labels), clients)
    if alpha <= 0:
        raise ValueError(f"Dirichlet alpha must be positive, got {alpha}")
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(str(label), []).append(i)
    parts: list[list[int]] = [[] for _ in range(clients)]
    for key in sorted(by_class):
        rows = np.array(by_class[key])
        rng.shuffle(rows)
        q = rng.dirichlet(np.full(clients, float(alpha)))
        cuts = (np.cumsum(q)[:-1] * len(rows)).round().astype(int)
        for k, chunk in enumerate(np.split(rows, cuts)):
            parts[k].extend(int(i) for i in chunk)
    return [sorted(p) for p in parts]


FFA_LABEL_SHARES = ((0.1, 0.9), (0.9, 0.1), (0.5, 0.5))  # FFA-LoRA's 3-client split of a binary task


def label_share_split(labels: Sequence[Any], shares: Sequence[Sequence[float]], seed: int = 0) -> list[list[int]]:
    """Client k's label mix follows ``shares[k]`` (one number per class, classes in sorted string order).

    Every row is still dealt exactly once: each class's shuffled rows are cut among the clients in
    proportion to that class's column of ``shares`` (normalised over the clients). With balanced
    classes and equal row sums (FFA-LoRA's [0.1,0.9],[0.9,0.1],[0.5,0.5]) each client gets the same
    number of rows and exactly the stated mix; with unbalanced classes the mixes tilt with the data.
    """
    clients = len(shares)
    _check(len(labels), clients)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(str(label), []).append(i)
    classes = sorted(by_class)
    widths = {len(row) for row in shares}
    if widths != {len(classes)}:
        raise ValueError(
            f"label shares give {sorted(widths)} numbers per client, but the label column has "
            f"{len(classes)} classes ({', '.join(classes)})"
        )
    if any(v < 0 for row in shares for v in row):
        raise ValueError("label shares must not be negative")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(clients)]
    for c, key in enumerate(classes):
        column = np.array([float(row[c]) for row in shares])
        if column.sum() <= 0:
            raise ValueError(f"no client takes label {key!r}: its share is 0 everywhere, so its rows would be lost")
        rows = np.array(by_class[key])
        rng.shuffle(rows)
        cuts = (np.cumsum(column / column.sum())[:-1] * len(rows)).round().astype(int)
        for k, chunk in enumerate(np.split(rows, cuts)):
            parts[k].extend(int(i) for i in chunk)
    return [sorted(p) for p in parts]


def column_split(values: Sequence[Any], clients: Sequence[Any] | None = None) -> tuple[list[Any], list[list[int]]]:
    """Rows grouped by the client their column names: (client names, index lists).

    ``clients`` fixes which names (and their order) to keep; rows naming other clients are
    refused, so no row is silently dropped. Without it, every distinct name is a client (sorted).
    """
    names = sorted({str(v) for v in values}) if clients is None else [str(c) for c in clients]
    position = {name: k for k, name in enumerate(names)}
    parts: list[list[int]] = [[] for _ in names]
    for i, value in enumerate(values):
        k = position.get(str(value))
        if k is None:
            raise ValueError(f"row {i} names client {value!r}, which is not among {names}")
        parts[k].append(i)
    return names, parts


def label_mix(labels: Sequence[Any], parts: Sequence[Sequence[int]]) -> dict[str, dict[str, int]]:
    """{client name: {label: rows}}: what each client holds (the chart shows it before a run starts)."""
    classes = sorted({str(v) for v in labels})
    mix = {}
    for k, part in enumerate(parts):
        counts = dict.fromkeys(classes, 0)
        for i in part:
            counts[str(labels[i])] += 1
        mix[f"client {k + 1}"] = counts
    return mix


def split_rows(rows: list[dict[str, Any]], params: Any) -> tuple[list[int], list[list[int]]]:
    """(validation rows, one index list per client) — validation is held out before the split.

    ``params`` is a FederatedParams or FederatedRequest (``seed``, ``validation_fraction``,
    ``split``, ``clients``, ``alpha``, ``label_shares``, ``label_column``, ``client_column``).
    """
    order = list(range(len(rows)))
    random.Random(params.seed).shuffle(order)
    n_val = max(1, round(params.validation_fraction * len(rows)))
    val, train = sorted(order[:n_val]), sorted(order[n_val:])
    if params.split == "iid":
        local = iid_split(len(train), params.clients, params.seed)
    elif params.split == "dirichlet":
        local = dirichlet_split(
            [rows[i].get(params.label_column) for i in train], params.clients, params.alpha, params.seed
        )
    elif params.split == "label_shares":
        if len(params.label_shares) != params.clients:
            raise ValueError(f"label shares name {len(params.label_shares)} clients, not {params.clients}")
        local = label_share_split([rows[i].get(params.label_column) for i in train], params.label_shares, params.seed)
    else:
        _, local = column_split([rows[i].get(params.client_column) for i in train])
        if len(local) != params.clients:
            raise ValueError(f"column {params.client_column!r} names {len(local)} clients, not {params.clients}")
    empty = [k for k, part in enumerate(local) if not part]
    if empty:
        raise ValueError(f"clients {[k + 1 for k in empty]} get no rows: use fewer clients or a larger alpha")
    return val, [[train[i] for i in part] for part in local]


def _check(n: int, clients: int) -> None:
    if clients < 1:
        raise ValueError(f"need at least one client, got {clients}")
    if n < clients:
        raise ValueError(f"{n} rows cannot be split among {clients} clients")
