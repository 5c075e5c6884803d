"""The Train form shows each variant's presets from the registry; picking one fills in its values."""

from __future__ import annotations

import gradio as gr

from app.variant_form import VariantForms
from studio.variants.registry import get_variant, variant_catalog


def test_nlora_and_inttune_show_official_and_small_model_presets():
    with gr.Blocks():
        forms = VariantForms(variant_catalog(), "lora")
    for name in ("nlora", "inttune"):
        radio = forms.preset_radios[name]
        assert [value for _, value in radio.choices] == [p.name for p in get_variant(name).presets]
        assert {"official", "small-model"} <= {value for _, value in radio.choices}
        assert radio.value == "official"  # the defaults are the official settings
    assert "lora" not in forms.preset_radios  # no presets declared, no choice shown
    assert forms.visibility("inttune")["group.inttune"]["visible"] is True


def test_picking_a_preset_sets_the_variants_own_widgets():
    with gr.Blocks():
        forms = VariantForms(variant_catalog(), "nlora")
    widgets = forms.inputs()
    values = forms.preset_values("nlora", "small-model")
    assert values == get_variant("nlora").preset("small-model").values
    updates = forms.set_values("nlora", values)
    assert updates["variant.nlora.residual"]["value"] is True
    assert updates["variant.nlora.lr_scale"]["value"] == 0.1
    assert set(updates) <= set(widgets)
    official = forms.set_values("nlora", forms.preset_values("nlora", "official"))
    assert official["variant.nlora.residual"]["value"] is False and official["variant.nlora.lr_scale"]["value"] == 1.0
    assert forms.preset_values("nlora", None) == {}


def test_train_tab_wires_each_preset_choice_to_its_variants_widgets(services):
    from app.main import build_app

    demo = build_app(services)
    handlers = {fn.name: fn for fn in demo.fns.values()}
    assert {"on_nlora_preset", "on_inttune_preset"} <= set(handlers)
    updates = handlers["on_nlora_preset"].fn("small-model")
    by_elem = {component.elem_id: update["value"] for component, update in updates.items()}
    assert by_elem == {"vp-nlora-residual": True, "vp-nlora-lr-scale": 0.1}
    updates = handlers["on_inttune_preset"].fn("official")
    assert {c.elem_id: u["value"] for c, u in updates.items()} == {"vp-inttune-residual": False}
