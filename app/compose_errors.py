"""Field-keyed validation errors for the Compose tab's forms (errors shown next to the field they are about).

A request with a nested settings block (MixtureRequest.settings) and model validators that name
their field in the message ("settings.top_k: at most …") needs one key per widget:
``"settings.top_k"``, ``"steps"``, ``"expert.1.dataset"``.
"""

from __future__ import annotations

import re
from typing import Any

import gradio as gr
from pydantic import ValidationError

from app.forms import SchemaForm
from studio.errors import ValidationFailed
from studio.plain_errors import plain_message

_NAMED = re.compile(r"^([A-Za-z_][\w.]*)(?:, [A-Za-z_][\w.]*)*: (.+)$", re.S)


class FormErrors(ValidationFailed):
    """Validation problems keyed by widget (``settings.<f>``, a top-level field, ``expert.<j>.adapter``)."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


def field_errors(exc: ValidationError) -> dict[str, str]:
    """``{dotted field: plain message}`` of a pydantic error; a model validator's message names its field."""
    out: dict[str, str] = {}
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if isinstance(p, str)]
        message = plain_message(err)
        if err.get("type") == "value_error":
            match = _NAMED.match(str(err.get("msg", "")).removeprefix("Value error, "))
            if match:  # "settings.top_k: at most …" from a model validator located at the model itself
                loc, message = match.group(1).split("."), match.group(2)
        out.setdefault(".".join(loc) or "request", message)
    return out


def form_error_updates(form: SchemaForm, prefix: str, errors: dict[str, str], key: str = "") -> dict[str, Any]:
    """``{f"{prefix}.{field}": update}`` for every widget of ``form``: its error under it, or its help restored.

    ``key`` is the errors' prefix for this form (``"settings."``); empty for top-level fields.
    """
    mine = {k.removeprefix(key): v for k, v in errors.items() if k.startswith(key) and "." not in k.removeprefix(key)}
    return dict(zip([f"{prefix}.{n}" for n in form.names], form.error_updates(mine), strict=True))


def widget_error(message: str | None, info: str) -> Any:
    """The update that shows ``message`` under a hand-made widget (or restores its ``info``)."""
    if message:
        return gr.update(info=f"⚠ {message}", elem_classes=["field-error"])
    return gr.update(info=info, elem_classes=[])
