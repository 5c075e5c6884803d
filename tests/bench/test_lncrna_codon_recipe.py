"""scripts/lncrna_pipeline.py --recipe codon runs exactly the studio's "Coding potential" recipe
(studio/sequences/recipes.py), the one the UI offers as presets, so the two cannot drift apart."""

from __future__ import annotations

import copy
import sys
from dataclasses import replace
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
for path in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import lncrna_pipeline  # noqa: E402

from studio.schema import PretrainRequest, TrainingHyperParams  # noqa: E402
from studio.sequences.recipes import (  # noqa: E402
    CODING_POTENTIAL,
    ROTARY_CODING_POTENTIAL,
    lora_params,
    pretrain_request,
    training_hyper,
)

SCRIPT_ONLY_HYPER = ("eval_every", "log_every", "save_every")  # the script's reporting, not the recipe


@pytest.mark.parametrize(
    ("name", "recipe"), [("codon", CODING_POTENTIAL), ("rotary", ROTARY_CODING_POTENTIAL)], ids=["codon", "rotary"]
)
def test_the_script_full_settings_are_the_recipes(name, recipe):
    sizes = lncrna_pipeline.recipe_sizes(name, quick=False)
    assert sizes["pretrain"] == dict(recipe.pretrain)
    script = PretrainRequest(dataset_id=1, name="lnc-bert", **{"size": "tiny", **sizes["pretrain"]})
    ours = pretrain_request(recipe, 1, name="lnc-bert")
    assert script == ours

    hyper = TrainingHyperParams(**lncrna_pipeline.lora_hyper(sizes["lora"]))
    expected = training_hyper(recipe, **{k: getattr(hyper, k) for k in SCRIPT_ONLY_HYPER})
    assert hyper == expected
    assert hyper.window_loss == "pooled_max" and hyper.head_learning_rate == recipe.train_hyper["head_learning_rate"]
    params = lncrna_pipeline.lora_variant_params(sizes["lora"])
    assert {k: lora_params(recipe)[k] for k in params} == params == dict(recipe.variant)


def test_the_rotary_recipe_builds_a_roformer_with_its_quick_settings_too():
    for quick in (False, True):
        pretrain = lncrna_pipeline.recipe_sizes("rotary", quick)["pretrain"]
        request = PretrainRequest(dataset_id=1, name="lnc-bert", **{"size": "tiny", **pretrain})
        assert request.architecture == "roformer" and request.tokenizer == "codon"
        assert lncrna_pipeline.recipe_sizes("rotary", quick)["lora"]["head_learning_rate"] == 0.02


def test_a_recipe_whose_alpha_is_not_twice_the_rank_keeps_it():
    odd = replace(CODING_POTENTIAL, variant={"r": 8, "lora_alpha": 8.0})
    assert lncrna_pipeline.lora_variant_params(lncrna_pipeline.recipe_lora(odd)) == {"r": 8, "lora_alpha": 8.0}


@pytest.mark.parametrize("quick", [False, True])
def test_overrides_still_apply_to_the_codon_recipe(quick):
    sizes = lncrna_pipeline.recipe_sizes("codon", quick)
    before = copy.deepcopy(sizes)
    changed = lncrna_pipeline.with_overrides(sizes, None, ["lora.rank=4", "lora.warmup_ratio=0.2"])
    assert lncrna_pipeline.lora_variant_params(changed["lora"]) == {"r": 4, "lora_alpha": 8}  # alpha follows rank
    assert TrainingHyperParams(**lncrna_pipeline.lora_hyper(changed["lora"])).warmup_ratio == 0.2
    assert sizes == before  # the recipe untouched
    pretrain = PretrainRequest(dataset_id=1, name="lnc-bert", **{"size": "tiny", **sizes["pretrain"]})
    assert pretrain.tokenizer == "codon" and pretrain.classifier_pooling == "mean"
