"""A sweep's search space is checked against the training and variant schemas before anything runs."""

from __future__ import annotations

import pytest

from studio.errors import ValidationFailed
from studio.schema import Choices, FloatRange, IntRange, SweepRequest, TrainingHyperParams
from studio.sweeps.space import check_space, parse_param, trial_request


def sweep(space: dict, variant: str = "lora", **fields) -> SweepRequest:
    hyper = TrainingHyperParams(validation_fraction=0.25, max_steps=4)
    return SweepRequest(dataset_id=1, base_model="tiny", variant=variant, space=space, hyper=hyper, **fields)


def test_a_valid_space_resolves_training_and_variant_settings():
    settings = check_space(
        sweep({"learning_rate": FloatRange(low=1e-5, high=1e-3, log=True), "r": IntRange(low=4, high=32)})
    )
    assert [s.key for s in settings] == ["hyper.learning_rate", "variant.r"]
    train = trial_request(sweep({"r": IntRange(low=4, high=8)}), {"hyper.learning_rate": 3e-4, "variant.r": 6}, 5)
    assert train.hyper.learning_rate == 3e-4 and train.variant_params["r"] == 6 and train.name.endswith("trial 5")
    assert train.hyper.max_steps == 4  # the fixed settings stay


def test_a_setting_not_in_the_schema_is_refused_with_what_can_be_searched():
    with pytest.raises(ValidationFailed, match=r"'rank' is not a setting.*searchable: .*learning_rate.*lora_dropout"):
        check_space(sweep({"rank": IntRange(low=4, high=8)}))


def test_out_of_bounds_values_are_refused_naming_the_value():
    with pytest.raises(ValidationFailed, match=r"variant.lora_dropout = 0.95 is not allowed"):
        check_space(sweep({"lora_dropout": FloatRange(low=0.0, high=0.95)}))
    with pytest.raises(ValidationFailed, match=r"hyper.lr_scheduler = 'cyclic' is not allowed"):
        check_space(sweep({"lr_scheduler": Choices(choices=["linear", "cyclic"])}))
    with pytest.raises(ValidationFailed, match=r"variant.r = 0 is not allowed"):
        check_space(sweep({"r": IntRange(low=0, high=8)}))


def test_a_range_must_match_the_field_type():
    with pytest.raises(ValidationFailed, match=r"variant.r is not a decimal number.*int:LOW:HIGH"):
        check_space(sweep({"r": FloatRange(low=4, high=8)}))
    with pytest.raises(ValidationFailed, match=r"hyper.learning_rate is not a whole number"):
        check_space(sweep({"learning_rate": IntRange(low=1, high=2)}))


def test_settings_that_decide_the_comparison_are_not_searchable():
    with pytest.raises(ValidationFailed, match="validation_fraction is fixed"):
        check_space(sweep({"validation_fraction": FloatRange(low=0.1, high=0.2)}))


def test_a_sweep_needs_a_validation_split():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="validation_fraction"):
        no_split = TrainingHyperParams(validation_fraction=0.0)
        SweepRequest(dataset_id=1, base_model="tiny", space={"r": IntRange(low=4, high=8)}, hyper=no_split)


def test_cli_param_syntax():
    assert parse_param("learning_rate=log:1e-5:1e-3") == ("learning_rate", FloatRange(low=1e-5, high=1e-3, log=True))
    assert parse_param("r=int:4:32") == ("r", IntRange(low=4, high=32))
    assert parse_param("lora_dropout=cat:0,0.05,0.1") == ("lora_dropout", Choices(choices=[0, 0.05, 0.1]))
    assert parse_param("lr_scheduler=cat:linear,cosine")[1].choices == ["linear", "cosine"]
    with pytest.raises(ValidationFailed, match="low .* must be below high"):
        parse_param("r=int:8:4")
    with pytest.raises(ValidationFailed, match="'x' is not a float"):
        parse_param("learning_rate=float:x:1")
    with pytest.raises(ValidationFailed, match="expected NAME=KIND"):
        parse_param("learning_rate")
