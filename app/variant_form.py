"""The variant-parameter part of the Train form, generated from every variant's params schema.

Fields every variant declares identically (r, lora_alpha, dropout, targets) are
one set of widgets; each variant's own knobs sit in a group shown only while
that variant is picked. Widget values are addressed by name: ``variant.<field>``
for shared fields and ``variant.<variant>.<field>`` for a variant's own. A variant
that declares presets (``Variant.presets``, in the catalog) gets a preset choice at
the top of its group; picking one fills in the preset's values.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.forms import FieldSpec, SchemaForm, parse_schema


class VariantForms:
    """Widgets for all variants' parameters (created where it is instantiated, inside a Blocks)."""

    def __init__(
        self,
        catalog: list[dict[str, Any]],
        selected: str,
        elem_prefix: str = "vp",
        initial: dict[str, Any] | None = None,
    ):
        specs = {info["name"]: parse_schema(info["params_schema"]) for info in catalog}
        titles = {info["name"]: info["title"] for info in catalog}
        self.presets = {info["name"]: info.get("presets", []) for info in catalog}
        self.preset_radios: dict[str, gr.Radio] = {}
        self.variant_names = list(specs)
        first = next(iter(specs.values()), [])
        shared = [
            spec
            for spec in first
            if all(any(other == spec for other in variant_specs) for variant_specs in specs.values())
        ]
        shared_names = {s.name for s in shared}
        self.shared = SchemaForm({}, elem_prefix, specs=shared, initial=initial)
        self.own: dict[str, SchemaForm] = {}
        self.groups: dict[str, gr.Group] = {}
        for name, variant_specs in specs.items():
            extra: list[FieldSpec] = [s for s in variant_specs if s.name not in shared_names]
            prefix = f"{elem_prefix}-{name.replace('_', '-')}"
            shown = name == selected and bool(extra or self.presets[name])
            with gr.Group(visible=shown, elem_classes=["variant-settings"]) as group:
                if extra:
                    gr.Markdown(f"**Settings of {titles[name]}**", padding=True)
                if self.presets[name]:
                    self.preset_radios[name] = self._preset_radio(name, titles[name], variant_specs, prefix)
                self.own[name] = SchemaForm({}, prefix, specs=extra, initial=initial)
            self.groups[name] = group

    def _preset_radio(self, name: str, title: str, specs: list[FieldSpec], prefix: str) -> gr.Radio:
        """The preset choice of one variant, preselected on the preset its defaults match, with the evidence."""
        defaults = {spec.name: spec.default for spec in specs}
        presets = self.presets[name]
        matching = next((p["name"] for p in presets if all(defaults.get(k) == v for k, v in p["values"].items())), None)
        radio = gr.Radio(
            choices=[(p["title"], p["name"]) for p in presets],
            value=matching,
            label=f"Preset of {title}",
            info="Fills in the settings below; you can still change each one.",
            elem_id=f"{prefix}-preset",
        )
        gr.Markdown("\n".join(f"- **{p['title']}**: {p['description']}" for p in presets), padding=True)
        return radio

    def preset_values(self, variant: str, preset: str | None) -> dict[str, Any]:
        """The values preset ``preset`` of ``variant`` sets (none for no preset)."""
        for entry in self.presets.get(variant, []):
            if entry["name"] == preset:
                return dict(entry["values"])
        return {}

    def inputs(self) -> dict[str, Any]:
        """Every widget by its value name (shared and per-variant)."""
        out = {f"variant.{n}": w for n, w in self.shared.widgets.items()}
        for variant, form in self.own.items():
            out.update({f"variant.{variant}.{n}": w for n, w in form.widgets.items()})
        return out

    def visibility(self, variant: str) -> dict[str, Any]:
        """Show only ``variant``'s own group (keyed ``group.<variant>``)."""
        return {
            f"group.{name}": gr.update(
                visible=name == variant and bool(self.own[name].widgets or name in self.preset_radios)
            )
            for name in self.variant_names
        }

    def group_outputs(self) -> dict[str, Any]:
        return {f"group.{name}": group for name, group in self.groups.items()}

    def values(self, variant: str, raw: dict[str, Any]) -> dict[str, Any]:
        """The parameters of ``variant`` from ``raw`` (value name -> widget value), by field name."""
        shared = self.shared.values([raw[f"variant.{n}"] for n in self.shared.names])
        own_form = self.own.get(variant)
        own = own_form.values([raw[f"variant.{variant}.{n}"] for n in own_form.names]) if own_form else {}
        return {**shared, **own}

    def set_values(self, variant: str, values: dict[str, Any]) -> dict[str, Any]:
        """Updates setting the named fields (shared, or ``variant``'s own) to ``values``."""
        out = {f"variant.{n}": gr.update(value=v) for n, v in values.items() if n in self.shared.widgets}
        own = self.own.get(variant)
        if own:
            out.update({f"variant.{variant}.{n}": gr.update(value=v) for n, v in values.items() if n in own.widgets})
        return out

    def error_updates(self, variant: str, errors: dict[str, str]) -> dict[str, Any]:
        """Errors shown under their fields; every other variant widget gets its help text back."""
        out = dict(zip([f"variant.{n}" for n in self.shared.names], self.shared.error_updates(errors), strict=True))
        for name, form in self.own.items():
            shown = errors if name == variant else {}
            out.update(zip([f"variant.{name}.{n}" for n in form.names], form.error_updates(shown), strict=True))
        return out
