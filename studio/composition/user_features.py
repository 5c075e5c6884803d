"""User-feature files for RecLoRA's feature gate: one numeric vector per user id.

Accepted layouts (the user column is named by the caller, default ``user``):

- JSONL / JSON list: ``{"user": "u1", "features": [0.1, 0.2, ...]}`` per row;
- CSV: a header with the user column and any number of numeric columns (in file order).

Every vector must have the same length; user ids are read as strings, each once.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from studio.errors import ValidationFailed


def read_user_features(path: str | Path, user_column: str = "user") -> dict[str, list[float]]:
    """{user id: feature vector} from a JSONL, JSON or CSV file (see the module docstring)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            records = [
                (row.get(user_column), [v for k, v in row.items() if k != user_column])
                for row in csv.DictReader(handle)
            ]
    else:
        text = path.read_text(encoding="utf-8")
        items = (
            json.loads(text)
            if path.suffix.lower() == ".json"
            else [json.loads(x) for x in text.splitlines() if x.strip()]
        )
        records = [(item.get(user_column), item.get("features")) for item in items]
    out: dict[str, list[float]] = {}
    for line, (user, vector) in enumerate(records, start=1):
        if user is None or str(user) == "":
            raise ValidationFailed(f"user features, row {line}: no value in the user column {user_column!r}")
        if str(user) in out:
            raise ValidationFailed(f"user features, row {line}: user {user!r} appears twice")
        out[str(user)] = _vector(vector, line)
    if not out:
        raise ValidationFailed("the user features file has no rows")
    if len({len(v) for v in out.values()}) != 1:
        raise ValidationFailed("user features: every user needs a vector of the same length")
    return out


def _vector(values: object, line: int) -> list[float]:
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise ValidationFailed(f"user features, row {line}: expected a non-empty list of numbers")
    try:
        vector = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValidationFailed(f"user features, row {line}: every feature must be a number") from None
    if not all(math.isfinite(v) for v in vector):
        raise ValidationFailed(f"user features, row {line}: features must be finite numbers")
    return vector


def features_matrix(features: Mapping[str, Sequence[float]], users: Sequence[str]):
    """The (len(users), feature_dim) tensor of ``users``' vectors in that order; every user needs one."""
    import torch

    missing = [u for u in users if u not in features]
    if missing:
        shown = ", ".join(repr(u) for u in missing[:5])
        raise ValidationFailed(f"{len(missing)} users have no feature vector (first: {shown})")
    return torch.tensor([list(features[u]) for u in users], dtype=torch.float32)
