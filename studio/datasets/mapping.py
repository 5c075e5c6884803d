"""Mappings the user gives: canonical field -> column, checked and completed.

The CLI spells a pair as ``--map prompt=question``; the issue also writes
``--map question=prompt``. Both orders are accepted (see :func:`orient_mapping`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from studio.datasets.formats import CANONICAL_FIELDS, FORMATS, Detection, FormatSpec
from studio.errors import ValidationFailed


def parse_map_options(pairs: Iterable[str]) -> dict[str, str]:
    """Split ``left=right`` strings (CLI ``--map``) into a dict, keeping the user's order of sides."""
    out: dict[str, str] = {}
    for pair in pairs:
        left, sep, right = pair.partition("=")
        left, right = left.strip(), right.strip()
        if not sep or not left or not right:
            raise ValidationFailed(f"--map {pair!r} must look like field=column, e.g. --map prompt=question")
        if left in out:
            raise ValidationFailed(f"--map {left}=... is given twice")
        out[left] = right
    return out


def orient_mapping(raw: Mapping[str, str], columns: list[str]) -> dict[str, str]:
    """Turn user pairs into canonical field -> column, accepting either order of the sides.

    A side that is a canonical field name is the field. When both sides are field
    names, the one that is also a column of the file is taken as the column.
    """
    canonical, present = set(CANONICAL_FIELDS), set(columns)
    out: dict[str, str] = {}
    for left, right in raw.items():
        if left in canonical and right in canonical:
            field_name, column = (right, left) if (left in present and right not in present) else (left, right)
        elif left in canonical:
            field_name, column = left, right
        elif right in canonical:
            field_name, column = right, left
        else:
            raise ValidationFailed(
                f"mapping {left}={right}: neither side is a field name; fields are {', '.join(CANONICAL_FIELDS)}"
            )
        if column not in present:
            raise ValidationFailed(
                f"mapping {field_name}={column}: the file has no column {column!r}; columns are {', '.join(columns)}"
            )
        if field_name in out and out[field_name] != column:
            raise ValidationFailed(f"field {field_name!r} is mapped twice ({out[field_name]!r} and {column!r})")
        out[field_name] = column
    return out


def resolve_mapping(columns: list[str], given: Mapping[str, str]) -> Detection:
    """Check a user's mapping and complete it with same-named columns; returns a confirmed Detection.

    The format is the one whose fields include every explicitly mapped field; when
    several fit (``text`` alone fits text and classification) the one with more
    required fields satisfied wins, so a file with a ``label`` column becomes classification.
    """
    oriented = orient_mapping(given, columns)
    if not oriented:
        raise ValidationFailed("the mapping is empty; give at least one field=column pair")
    used = list(oriented.values())
    duplicates = sorted({c for c in used if used.count(c) > 1})
    if duplicates:
        raise ValidationFailed(f"column {duplicates[0]!r} is mapped to more than one field")
    best: tuple[int, dict[str, str], FormatSpec] | None = None
    shortest_missing: tuple[FormatSpec, list[str]] | None = None
    for spec in FORMATS.values():
        if not set(oriented) <= set(spec.fields):
            continue
        filled = dict(oriented)
        for name in spec.fields:
            if name not in filled and name in columns and name not in filled.values():
                filled[name] = name  # a column named like the field fills it
        missing = [name for name in spec.required if name not in filled]
        if missing:
            if shortest_missing is None or len(missing) < len(shortest_missing[1]):
                shortest_missing = (spec, missing)
            continue
        if best is None or len(spec.required) > best[0]:
            best = (len(spec.required), filled, spec)
    if best is None:
        if shortest_missing is None:
            raise ValidationFailed(
                f"mapped fields {', '.join(oriented)} do not belong to one format; formats and fields: "
                + "; ".join(f"{s.name}: {', '.join(s.fields)}" for s in FORMATS.values())
            )
        spec, missing = shortest_missing
        raise ValidationFailed(
            f"the mapping is incomplete: {spec.name} also needs {', '.join(missing)} (add --map {missing[0]}=COLUMN)"
        )
    _, mapping, spec = best
    ordered = {name: mapping[name] for name in spec.fields if name in mapping}
    ignored = [c for c in columns if c not in ordered.values()]
    return Detection(spec.name, ordered, 1.0, False, "mapping given by the user", ignored)
