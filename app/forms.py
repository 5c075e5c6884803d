"""Widgets generated from a pydantic JSON schema, and values mapped back by field name.

One schema drives the form (H2O LLM Studio's lesson): labels and help come from
the field titles and descriptions, ranges become sliders, ``Literal`` choices
become dropdowns, booleans checkboxes. A number is never typed into a free text
box: bounded numbers get a slider when the range is small enough to drag
through, a numeric input with the same bounds otherwise (a learning rate
between 1e-6 and 1 cannot be dragged to).

Values always travel as ``{field name: value}``: a handler receives the
components in :attr:`SchemaForm.components` order and calls
:meth:`SchemaForm.values` to get the dict — no handler ever indexes by position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from studio.plain_errors import error_field, plain_message

# Suggestions for list-of-module-name fields; any other name may be typed.
MODULE_SUGGESTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MAX_SLIDER_STEPS = 20_000


@dataclass
class FieldSpec:
    """What the form needs to know about one schema property."""

    name: str
    kind: str  # int | float | bool | choice | list | text
    label: str
    info: str
    default: Any
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: list[Any] = field(default_factory=list)
    number_too: bool = False  # a choice that also takes a number (Literal[...] | float): typed into the dropdown

    def is_slider(self) -> bool:
        """Whether this field is shown as a slider (bounded, not nullable, draggable range)."""
        return self.kind in ("int", "float") and not self.nullable and self.slider_step() is not None

    def help_text(self) -> str:
        """The description, plus the allowed range for number inputs (sliders show it themselves)."""
        if self.kind not in ("int", "float") or self.is_slider():
            return self.info
        empty = "Leave empty (or 0) for the default." if self.zero_means_empty() else "Leave empty for the default."
        parts = [self.info, self.range_text(), empty if self.nullable else ""]
        return " ".join(p for p in parts if p)

    def zero_means_empty(self) -> bool:
        """A nullable number whose range excludes 0: a 0 from the widget can only mean "empty".

        Gradio's number box has no empty state: it shows and sends 0 for a None value, so
        an untouched optional field (max steps, a merge's rank) would arrive as 0 and fail
        validation instead of taking its default.
        """
        if not self.nullable or self.kind not in ("int", "float") or self.minimum is None:
            return False
        return self.minimum > 0 or (self.exclusive_minimum and self.minimum >= 0)

    def range_text(self) -> str:
        """'Allowed: at least 1, at most 64.' style help for number inputs ('' when unbounded)."""
        parts = []
        if self.minimum is not None:
            low = _number(self.minimum)
            parts.append(f"more than {low}" if self.exclusive_minimum else f"at least {low}")
        if self.maximum is not None:
            parts.append(f"at most {_number(self.maximum)}")
        return f"Allowed: {', '.join(parts)}." if parts else ""

    def slider_step(self) -> float | None:
        """A drag step for a slider, or None when a slider would not be usable."""
        if self.minimum is None or self.maximum is None:
            return None
        span = self.maximum - self.minimum
        if span <= 0:
            return None
        if self.kind == "int":
            return 1 if span <= MAX_SLIDER_STEPS else None
        # Fine enough to reach the default and a hundredth of the range, in powers of ten.
        wanted = [span / 100]
        if isinstance(self.default, int | float) and self.default:
            wanted.append(abs(self.default) / 10)
        step = 10 ** math.floor(math.log10(min(wanted)))
        return step if span / step <= MAX_SLIDER_STEPS else None


def parse_schema(schema: dict[str, Any], skip: tuple[str, ...] = ()) -> list[FieldSpec]:
    """The form fields of a pydantic ``model_json_schema()``, in declaration order."""
    defs = schema.get("$defs", {})
    out = []
    for name, prop in schema.get("properties", {}).items():
        if name in skip:
            continue
        spec = _field_spec(name, _deref(prop, defs), defs)
        if spec is not None:
            out.append(spec)
    return out


def _deref(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref")
    if ref:
        return {**defs.get(ref.rsplit("/", 1)[-1], {}), **{k: v for k, v in prop.items() if k != "$ref"}}
    return prop


def _field_spec(name: str, prop: dict[str, Any], defs: dict[str, Any]) -> FieldSpec | None:
    nullable = False
    body = prop
    if "anyOf" in prop:
        options = [_deref(o, defs) for o in prop["anyOf"]]
        nullable = any(o.get("type") == "null" for o in options)
        real = [o for o in options if o.get("type") != "null"]
        numbers = [o for o in real if o.get("type") in ("number", "integer") and "enum" not in o]
        if len(real) == 2 and len(numbers) == 1 and any("enum" in o for o in real):
            # A named choice or a number (lego's output_reweight): a dropdown that accepts a typed number.
            enum = next(o for o in real if "enum" in o)
            real = [{**enum, "number_too": True}]
        if len(real) != 1:
            return None  # unions the form cannot express are left to their defaults
        body = {**real[0], **{k: v for k, v in prop.items() if k != "anyOf"}}
    label = prop.get("title") or name.replace("_", " ").capitalize()
    spec = FieldSpec(
        name=name,
        kind="text",
        label=_humanise(label),
        info=prop.get("description", ""),
        default=prop.get("default"),
        nullable=nullable,
    )
    kind = body.get("type")
    if "enum" in body or "const" in body:
        spec.kind, spec.choices = "choice", list(body.get("enum") or [body.get("const")])
        spec.number_too = bool(body.get("number_too"))
    elif kind == "boolean":
        spec.kind = "bool"
    elif kind in ("integer", "number"):
        spec.kind = "int" if kind == "integer" else "float"
        if "exclusiveMinimum" in body:
            spec.minimum, spec.exclusive_minimum = body["exclusiveMinimum"], True
        else:
            spec.minimum = body.get("minimum")
        spec.maximum = body.get("maximum", body.get("exclusiveMaximum"))
    elif kind == "array":
        items = _deref(body.get("items", {}), defs)
        if "enum" in items:
            spec.kind, spec.choices = "list", list(items["enum"])
        else:
            spec.kind, spec.choices = "list", list(MODULE_SUGGESTIONS) if "module" in name else []
    elif kind != "string":
        return None
    return spec


def _number(value: float) -> str:
    """1000000 -> '1,000,000'; 0.0001 -> '0.0001'."""
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def _humanise(title: str) -> str:
    """'Lora Alpha' -> 'LoRA alpha'; keeps the first word's capital only."""
    words = title.split()
    text = " ".join([words[0], *(w.lower() for w in words[1:])]) if words else title
    return text.replace("Lora", "LoRA").replace("lora", "LoRA").replace("Lr", "LR").replace(" lr", " LR")


def make_component(spec: FieldSpec, elem_prefix: str, value: Any = None) -> gr.components.Component:
    """The Gradio widget for one field (created in the current Blocks context); ``value`` overrides the default."""
    value = spec.default if value is None else value
    elem_id = f"{elem_prefix}-{spec.name.replace('_', '-')}"
    common = dict(label=spec.label, info=spec.help_text(), elem_id=elem_id)
    if spec.kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if spec.kind == "choice":
        return gr.Dropdown(choices=spec.choices, value=value, allow_custom_value=spec.number_too, **common)
    if spec.kind == "list":
        return gr.Dropdown(
            choices=spec.choices, value=list(value or []), multiselect=True, allow_custom_value=True, **common
        )
    if spec.kind in ("int", "float"):
        step = spec.slider_step()
        if spec.is_slider():
            low = spec.minimum + step if spec.exclusive_minimum else spec.minimum
            return gr.Slider(minimum=low, maximum=spec.maximum, step=step, value=value, **common)
        # The range goes into the help text rather than Number's minimum/maximum: Gradio would
        # reject an out-of-range value before the handler runs and flag every field of the
        # form, while the schema's own validation names this field and says what to do.
        return gr.Number(
            value=value,
            precision=0 if spec.kind == "int" else None,
            step=step or (1 if spec.kind == "int" else None),
            **common,
        )
    return gr.Textbox(value=value or "", **common)


class SchemaForm:
    """Widgets for a JSON schema's fields, created where it is instantiated (inside a Blocks)."""

    def __init__(
        self,
        schema: dict[str, Any],
        elem_prefix: str,
        skip: tuple[str, ...] = (),
        only: tuple[str, ...] | None = None,
        specs: list[FieldSpec] | None = None,
        initial: dict[str, Any] | None = None,
    ):
        fields = specs if specs is not None else parse_schema(schema, skip)
        if only is not None:
            fields = [f for f in fields if f.name in only]
        self.specs: dict[str, FieldSpec] = {f.name: f for f in fields}
        self.widgets: dict[str, gr.components.Component] = {
            f.name: make_component(f, elem_prefix, (initial or {}).get(f.name)) for f in fields
        }

    @property
    def names(self) -> list[str]:
        return list(self.widgets)

    @property
    def components(self) -> list[gr.components.Component]:
        """The widgets in a fixed order: pass them as ``inputs`` and read back with :meth:`values`."""
        return list(self.widgets.values())

    def values(self, raw: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
        """``{field name: value}`` from the widget values given in :attr:`components` order."""
        return {name: coerce(self.specs[name], value) for name, value in zip(self.names, raw, strict=True)}

    def updates(self, values: dict[str, Any]) -> list[Any]:
        """One ``gr.update`` per widget: the new value where ``values`` names it, unchanged otherwise."""
        return [gr.update(value=values[name]) if name in values else gr.update() for name in self.names]

    def error_updates(self, errors: dict[str, str]) -> list[Any]:
        """Show each error under its field (in the help line, highlighted); restore the others."""
        out = []
        for name, spec in self.specs.items():
            if name in errors:
                out.append(gr.update(info=f"⚠ {errors[name]}", elem_classes=["field-error"]))
            else:
                out.append(gr.update(info=spec.help_text(), elem_classes=[]))
        return out


def coerce(spec: FieldSpec, value: Any) -> Any:
    """A widget value turned into what the schema expects (ints stay ints, empty means None)."""
    if value is None or (isinstance(value, str) and not value.strip() and spec.kind != "text"):
        return None if spec.nullable else spec.default
    if spec.zero_means_empty() and float(value) == 0:
        return None
    if spec.kind == "int":
        return int(round(float(value)))
    if spec.kind == "float":
        return float(value)
    if spec.kind == "list":
        items = [str(v).strip() for v in (value or []) if str(v).strip()]
        return items or (None if spec.nullable else [])
    if spec.kind == "text" and spec.nullable and not str(value).strip():
        return None
    if spec.number_too and value not in spec.choices:
        try:
            return float(value)
        except (TypeError, ValueError):
            return value  # the schema names the field and the allowed values
    return value


def errors_by_field(exc: Any, prefix: tuple[str, ...] = ()) -> dict[str, str]:
    """Map a pydantic ValidationError to ``{field name: message in plain words}`` for the fields under ``prefix``."""
    out: dict[str, str] = {}
    for err in exc.errors():
        loc = tuple(str(p) for p in err.get("loc", ()))
        if loc[: len(prefix)] != prefix:
            continue
        # A model validator's error sits at the model itself and names its field in the message.
        name = loc[len(prefix)] if len(loc) > len(prefix) else error_field(err)
        if name:
            out.setdefault(name, plain_message(err))
    return out
