"""studio/sequences/recipes.py: each named recipe builds valid requests, and a typo in one fails loudly."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import ValidationError

from studio.sequences.recipes import (
    CODING_POTENTIAL,
    SEQUENCE_RECIPES,
    lora_params,
    pretrain_request,
    training_hyper,
)


@pytest.mark.parametrize("name", list(SEQUENCE_RECIPES))
def test_every_recipe_builds_valid_requests_with_its_own_values(name):
    recipe = SEQUENCE_RECIPES[name]
    assert recipe.name == name
    request = pretrain_request(recipe, dataset_id=3, name="enc")
    assert request.dataset_id == 3 and request.name == "enc"
    assert {k: getattr(request, k) for k in recipe.pretrain} == dict(recipe.pretrain)
    hyper = training_hyper(recipe)
    assert {k: getattr(hyper, k) for k in recipe.train_hyper} == dict(recipe.train_hyper)
    params = lora_params(recipe)
    assert {k: params[k] for k in recipe.variant} == dict(recipe.variant)


def test_the_coding_potential_recipe_reads_codons_with_a_pooled_loss():
    request = pretrain_request(CODING_POTENTIAL, dataset_id=1)
    assert request.tokenizer == "codon" and request.k is None and request.classifier_pooling == "mean"
    hyper = training_hyper(CODING_POTENTIAL)
    assert hyper.window_loss == "pooled_max" and hyper.head_learning_rate > hyper.learning_rate
    assert "lncRNA" in CODING_POTENTIAL.purpose and "docs/results/classification_lncrna.md" in CODING_POTENTIAL.purpose


def test_overrides_win_and_are_validated_too():
    assert pretrain_request(CODING_POTENTIAL, 1, max_steps=5).max_steps == 5
    assert training_hyper(CODING_POTENTIAL, max_steps=7).max_steps == 7
    with pytest.raises(ValidationError, match="batch_size"):
        training_hyper(CODING_POTENTIAL, batch_size=0)


def test_a_typo_in_a_recipe_fails_loudly():
    misspelt = replace(CODING_POTENTIAL, pretrain={**CODING_POTENTIAL.pretrain, "max_lenght": 130})
    with pytest.raises(ValidationError, match="max_lenght"):
        pretrain_request(misspelt, 1)
    wrong_loss = replace(CODING_POTENTIAL, train_hyper={**CODING_POTENTIAL.train_hyper, "window_loss": "pooled-max"})
    with pytest.raises(ValidationError, match="window_loss"):
        training_hyper(wrong_loss)
    with pytest.raises(ValidationError):
        lora_params(replace(CODING_POTENTIAL, variant={"rank": 16}))


def test_a_recipe_cannot_be_changed_by_its_users():
    with pytest.raises(TypeError):
        CODING_POTENTIAL.pretrain["max_steps"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        CODING_POTENTIAL.train_hyper["learning_rate"] = 1.0  # type: ignore[index]
