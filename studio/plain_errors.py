"""Pydantic validation errors in plain words: 'Max steps: must be at least 1', never 'Input should be…'.

The UI (next to the field), the CLI (one line) and job refusals all use these sentences,
so a person reads the same words wherever the request was checked.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

# "weights: give one weight per adapter" — a model validator names its field at the start.
_FIELD_PREFIX = re.compile(r"^([a-z][a-z0-9_]*): (.+)$", re.DOTALL)
_ACRONYMS = {"lr": "LR", "lora": "LoRA"}


def _number(value: Any) -> str:
    """1 -> '1', 1e-06 -> '1e-06', 0.5 -> '0.5' (no '1.0' for whole numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def _items(count: Any) -> str:
    return f"{count} item" if count == 1 else f"{count} items"


def plain_message(error: Any) -> str:
    """One pydantic error (an item of ``exc.errors()``) as a short phrase without its field name."""
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    msg = str(error.get("msg", "is not valid"))
    bounds = {
        "greater_than_equal": ("ge", "must be at least {}"),
        "greater_than": ("gt", "must be more than {}"),
        "less_than_equal": ("le", "must be at most {}"),
        "less_than": ("lt", "must be less than {}"),
    }
    if kind in bounds:
        key, text = bounds[kind]
        return text.format(_number(ctx.get(key)))
    if kind == "missing":
        return "is required"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "must be a whole number"
    if kind in ("float_parsing", "float_type", "decimal_parsing"):
        return "must be a number"
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false"
    if kind == "string_too_short":
        size = ctx.get("min_length", 1)
        return "must not be empty" if size == 1 else f"must be at least {size} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        return f"needs at least {_items(ctx.get('min_length'))}"
    if kind == "too_long":
        return f"takes at most {_items(ctx.get('max_length'))}"
    if kind in ("literal_error", "enum"):
        return f"must be one of {ctx.get('expected', '')}".rstrip()
    if kind == "extra_forbidden":
        return "is not a known setting; remove it"
    if kind == "value_error":
        return _split_field(msg.removeprefix("Value error, "))[1]
    return msg[:1].lower() + msg[1:]


def _split_field(message: str) -> tuple[str | None, str]:
    """'weights: give one …' -> ('weights', 'give one …'); a message without a field prefix -> (None, message)."""
    match = _FIELD_PREFIX.match(message)
    return (match.group(1), match.group(2)) if match else (None, message)


def error_field(error: Any) -> str | None:
    """The field an error is about: a model validator's named field, else the last name in its location."""
    if error.get("type") == "value_error":
        named, _ = _split_field(str(error.get("msg", "")).removeprefix("Value error, "))
        if named:
            return named
    names = [part for part in error.get("loc", ()) if isinstance(part, str)]
    return names[-1] if names else None


def field_label(name: str | None) -> str:
    """'max_steps' -> 'Max steps'; 'dataset_id' -> 'Dataset'; no field -> 'Request'."""
    if not name:
        return "Request"
    words = [_ACRONYMS.get(w, w) for w in name.removesuffix("_id").split("_") if w]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def describe_validation_error(exc: ValidationError, skip_names: tuple[str, ...] = ()) -> str:
    """Every problem as 'Field: what to do', joined by '; ' (one line for a CLI or a status message).

    ``skip_names`` are location parts that are not fields (a discriminated union's tag,
    like ``merge``): a model validator's error located only there takes its field from
    the message instead.
    """
    lines = []
    for error in exc.errors():
        loc = tuple(p for p in error.get("loc", ()) if p not in skip_names)
        name = error_field({**error, "loc": loc})
        # A name the schema does not know is shown as typed: it has no label, and it is what to look for.
        label = name if error.get("type") == "extra_forbidden" and name else field_label(name)
        line = f"{label}: {plain_message(error)}"
        if line not in lines:
            lines.append(line)
    return "; ".join(lines) or "the request is not valid"
