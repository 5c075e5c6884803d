"""Validation errors read as plain words naming the field, wherever a request is checked."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from studio.errors import ValidationFailed
from studio.plain_errors import describe_validation_error
from studio.schema import MergeRequest, TrainingHyperParams, parse_request


def refusal(data: dict) -> str:
    with pytest.raises(ValidationFailed) as caught:
        parse_request(data)
    return str(caught.value)


def test_a_model_validator_names_its_field_not_the_request_kind():
    text = refusal({"kind": "merge", "adapter_ids": [1, 2], "weights": [1.0]})
    assert text == "Weights: give one weight per adapter (1 given for 2 adapters)"
    assert "Value error" not in text and "merge" not in text.lower()


def test_bounds_types_lengths_and_choices_are_said_plainly():
    text = refusal(
        {
            "kind": "train",
            "dataset_id": 1,
            "base_model": "b",
            "name": "x" * 201,
            "hyper": {"max_steps": -5, "batch_size": "many", "learning_rate": 0, "lr_scheduler": "wavy"},
        }
    )
    assert set(text.split("; ")) == {
        "Name: must be at most 200 characters",
        "Max steps: must be at least 1",
        "Batch size: must be a whole number",
        "Learning rate: must be more than 0",
        "LR scheduler: must be one of 'linear', 'cosine' or 'constant'",
    }
    assert refusal({"kind": "merge", "adapter_ids": []}) == "Adapter ids: needs at least 1 item"
    assert refusal({"kind": "eval"}) == "Dataset: is required"


def test_a_model_outside_the_job_union_keeps_its_own_field_names():
    with pytest.raises(ValidationError) as caught:
        TrainingHyperParams.model_validate({"max_grad_norm": 101, "surprise": 1})
    assert describe_validation_error(caught.value) == (
        "Max grad norm: must be at most 100; surprise: is not a known setting; remove it"
    )
    with pytest.raises(ValidationError) as caught:
        MergeRequest.model_validate({"adapter_ids": [4, 4]})
    assert describe_validation_error(caught.value) == "Adapter ids: each adapter may appear only once"
