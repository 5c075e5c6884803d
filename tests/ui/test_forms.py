"""app.forms: widgets from pydantic schemas, values back by field name, errors next to fields."""

from __future__ import annotations

from typing import Literal

import gradio as gr
import pytest
from pydantic import BaseModel, Field, ValidationError

from app.forms import SchemaForm, errors_by_field, parse_schema
from studio.schema import TrainingHyperParams
from studio.variants.registry import variant_catalog


class Example(BaseModel):
    rank: int = Field(8, ge=1, le=64, description="Rank.")
    lr: float = Field(2e-4, gt=0, le=1.0, description="Learning rate.")
    dropout: float = Field(0.05, ge=0, le=0.9, description="Dropout.")
    steps: int | None = Field(None, ge=1, le=1_000_000, description="Max steps.")
    mode: Literal["a", "b"] = Field("a", description="Mode.")
    flag: bool = Field(False, description="Flag.")
    targets: list[str] | None = Field(None, description="Target modules.")


def test_widget_kinds_follow_the_schema():
    with gr.Blocks():
        form = SchemaForm(Example.model_json_schema(), "ex")
    w = form.widgets
    assert isinstance(w["rank"], gr.Slider) and (w["rank"].minimum, w["rank"].maximum, w["rank"].step) == (1, 64, 1)
    assert isinstance(w["dropout"], gr.Slider) and w["dropout"].maximum == 0.9
    assert isinstance(w["lr"], gr.Number)  # 1e-6..1 cannot be dragged to: a number input
    assert w["lr"].info == "Learning rate. Allowed: more than 0, at most 1."  # checked by the schema, per field
    assert isinstance(w["steps"], gr.Number) and w["steps"].value is None
    assert isinstance(w["mode"], gr.Dropdown) and [c[1] for c in w["mode"].choices] == ["a", "b"]
    assert isinstance(w["flag"], gr.Checkbox)
    assert isinstance(w["targets"], gr.Dropdown) and w["targets"].multiselect
    assert w["rank"].label == "Rank" and w["rank"].info == "Rank." and w["rank"].elem_id == "ex-rank"


def test_no_number_is_ever_a_textbox():
    specs = parse_schema(TrainingHyperParams.model_json_schema())
    for info in variant_catalog():
        specs += parse_schema(info["params_schema"])
    with gr.Blocks():
        form = SchemaForm({}, "all", specs=specs)
    numeric = [s.name for s in specs if s.kind in ("int", "float")]
    assert numeric and all(not isinstance(form.widgets[n], gr.Textbox) for n in numeric)


def test_values_come_back_by_name_and_typed():
    with gr.Blocks():
        form = SchemaForm(Example.model_json_schema(), "ex")
    raw = {"rank": 16.0, "lr": 0.001, "dropout": 0.1, "steps": None, "mode": "b", "flag": True, "targets": []}
    values = form.values([raw[n] for n in form.names])
    assert values == {
        "rank": 16,
        "lr": 0.001,
        "dropout": 0.1,
        "steps": None,
        "mode": "b",
        "flag": True,
        "targets": None,
    }
    assert isinstance(values["rank"], int)
    Example.model_validate(values)


def test_an_untouched_optional_number_means_the_default():
    """Gradio's number box sends 0 for an empty optional field; where 0 is not allowed it means "empty"."""

    class Optional(BaseModel):
        steps: int | None = Field(None, ge=1, description="Max steps.")
        offset: float | None = Field(None, ge=0, description="Offset.")

    with gr.Blocks():
        form = SchemaForm(Optional.model_json_schema(), "opt")
    assert form.values([0, 0]) == {"steps": None, "offset": 0.0}  # 0 is a real offset, not a real step count
    assert form.values([12, 0.5]) == {"steps": 12, "offset": 0.5}
    assert "Leave empty (or 0) for the default." in form.widgets["steps"].info
    assert "(or 0)" not in form.widgets["offset"].info
    Optional.model_validate(form.values([0, 0]))


def test_initial_values_override_defaults():
    with gr.Blocks():
        form = SchemaForm(Example.model_json_schema(), "ex", initial={"rank": 32, "steps": 30})
    assert form.widgets["rank"].value == 32 and form.widgets["steps"].value == 30


def test_pydantic_errors_map_to_field_names():
    with pytest.raises(ValidationError) as caught:
        TrainingHyperParams.model_validate({"batch_size": 0, "learning_rate": -1})
    errors = errors_by_field(caught.value)
    assert set(errors) == {"batch_size", "learning_rate"}
    assert errors["batch_size"] == "must be at least 1" and errors["learning_rate"] == "must be more than 0"
    with gr.Blocks():
        form = SchemaForm(TrainingHyperParams.model_json_schema(), "hp")
    updates = dict(zip(form.names, form.error_updates(errors), strict=True))
    assert updates["batch_size"]["info"].startswith("⚠") and updates["batch_size"]["elem_classes"] == ["field-error"]
    assert updates["epochs"]["info"] == TrainingHyperParams.model_fields["epochs"].description
