"""Paired comparison of two classifiers on the same rows: McNemar's exact p, the paired bootstrap CI, the sentence."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

from studio.evaluation.comparison import compare_models, comparison_lines
from studio.evaluation.paired import paired_comparison, paired_sentence


def vectors(only_a: int, only_b: int, both: int, neither: int) -> tuple[list[bool], list[bool]]:
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return a, b


def test_ten_discordant_rows_all_for_a_is_significant():
    a, b = vectors(only_a=10, only_b=0, both=85, neither=5)
    entry = paired_comparison(a, b)
    assert entry["rows"] == 100 and entry["only_a"] == 10 and entry["only_b"] == 0
    assert entry["accuracy_a"] == pytest.approx(0.95) and entry["accuracy_b"] == pytest.approx(0.85)
    assert entry["difference"] == pytest.approx(0.10)
    assert entry["p_value"] == pytest.approx(2 * 0.5**10)  # 0.001953125: exact two-sided binomial
    assert entry["verdict"] == "A better"
    assert 0 < entry["ci_low"] <= entry["difference"] <= entry["ci_high"]
    assert set(entry) == {
        "rows",
        "accuracy_a",
        "accuracy_b",
        "difference",
        "ci_low",
        "ci_high",
        "only_a",
        "only_b",
        "p_value",
        "verdict",
    }
    json.dumps(entry)  # storable in a job result


def test_swapping_the_models_swaps_the_verdict_and_mirrors_the_numbers():
    a, b = vectors(only_a=10, only_b=0, both=85, neither=5)
    forward, backward = paired_comparison(a, b), paired_comparison(b, a)
    assert backward["verdict"] == "B better"
    assert backward["only_a"] == 0 and backward["only_b"] == 10
    assert backward["difference"] == pytest.approx(-0.10)
    assert backward["ci_high"] < 0
    assert backward["p_value"] == forward["p_value"]


def test_identical_answers_show_no_difference():
    a = [True] * 70 + [False] * 30
    entry = paired_comparison(a, list(a))
    assert entry["difference"] == 0 and entry["only_a"] == entry["only_b"] == 0
    assert entry["p_value"] == 1.0 and entry["verdict"] == "no clear difference"
    assert entry["ci_low"] == entry["ci_high"] == 0.0


def test_a_small_balanced_disagreement_is_not_significant():
    # 21 vs 18 discordant rows of 700 (the sentence's example): p ≈ 0.75, the CI straddles 0.
    a, b = vectors(only_a=21, only_b=18, both=620, neither=41)
    entry = paired_comparison(a, b)
    assert entry["p_value"] == pytest.approx(0.7493, abs=1e-3)
    assert entry["verdict"] == "no clear difference"
    assert entry["ci_low"] < 0 < entry["ci_high"]


def test_alpha_decides_significance():
    a, b = vectors(only_a=10, only_b=2, both=80, neither=8)  # p = 0.0386
    assert paired_comparison(a, b)["verdict"] == "A better"
    assert paired_comparison(a, b, alpha=0.01)["verdict"] == "no clear difference"


def test_the_seeded_interval_is_reproducible_and_the_seed_matters():
    rng = random.Random(3)
    a = [rng.random() < 0.9 for _ in range(300)]
    b = [rng.random() < 0.88 for _ in range(300)]
    first, again = paired_comparison(a, b, seed=5), paired_comparison(a, b, seed=5)
    assert (first["ci_low"], first["ci_high"]) == (again["ci_low"], again["ci_high"])
    other = paired_comparison(a, b, seed=6)
    assert (other["ci_low"], other["ci_high"]) != (first["ci_low"], first["ci_high"])
    assert other["p_value"] == first["p_value"]  # the exact test needs no randomness


def test_the_interval_is_paired_not_two_independent_samples():
    # B is A with 3 extra wrong rows: resampled with the same indices the difference is never negative;
    # resampling each model on its own would give a wide interval around the gap.
    a = [True] * 180 + [False] * 20
    b = [False] * 3 + [True] * 177 + [False] * 20
    entry = paired_comparison(a, b)
    assert entry["ci_low"] >= 0 and entry["ci_high"] <= 0.04


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same rows: 3 vs 2"):
        paired_comparison([True, False, True], [True, False])
    with pytest.raises(ValueError, match="at least one row"):
        paired_comparison([], [])
    with pytest.raises(ValueError, match="None"):
        paired_comparison([True, None], [True, False])


def test_sentence_reads_as_plain_english():
    a, b = vectors(only_a=21, only_b=18, both=620, neither=41)
    entry = paired_comparison(a, b)
    text = paired_sentence(entry, "adapter #1", "baseline logistic-regression")
    assert text.startswith("adapter #1 vs baseline logistic-regression: +0.004 accuracy (95 % CI \u2212"), text
    assert (
        "adapter #1 is right on 21 rows where baseline logistic-regression is wrong, and wrong on 18 where it is "
        "right (McNemar p = 0.75): no clear difference on these 700 rows."
    ) in text
    a, b = vectors(only_a=0, only_b=10, both=85, neither=5)
    text = paired_sentence(paired_comparison(a, b), "adapter #1", "base m")
    assert "(95 % CI \u2212" in text and "(McNemar p = 0.002): base m is better on these 100 rows." in text


def test_comparison_lines_and_the_evaluate_tab_add_one_sentence_per_pair():
    from app.tab_evaluate import paired_markdown, show_result

    models = [
        {"key": "adapter:1", "metrics": {"accuracy": 0.9}},
        {"key": "baseline:logistic-regression", "metrics": {"accuracy": 0.8}},
    ]
    a, b = vectors(only_a=10, only_b=0, both=80, neither=10)
    entry = {"a": "adapter:1", "b": "baseline:logistic-regression", **paired_comparison(a, b)}
    result = {"task": "classification", "models": models, "comparison": compare_models(models), "paired": [entry]}
    sentence = paired_sentence(entry, "adapter #1", "baseline logistic-regression")
    lines = comparison_lines(result)
    assert lines[-1] == sentence and lines[-2] == "* best of the models compared"
    # Without paired entries the output is what it was.
    assert comparison_lines({**result, "paired": []}) == lines[:-1] == comparison_lines({**result, "paired": None})

    assert sentence in paired_markdown(result) and paired_markdown({**result, "paired": []}) == ""
    services = SimpleNamespace(jobs=SimpleNamespace(get=lambda _id: SimpleNamespace(result=result)))
    assert sentence in show_result(services, 3)["paired"]


def test_asking_for_the_baseline_scores_accuracy_too():
    from studio.schema import EvalRequest

    request = EvalRequest(adapter_id=1, dataset_id=2, include_baseline=True)  # the form's default metrics: loss
    assert request.metrics == ["loss", "accuracy"]
    assert EvalRequest(adapter_id=1, dataset_id=2).metrics == ["loss"]  # without the baseline: as asked


def test_one_discordant_row_reads_as_one_row():
    entry = paired_comparison([True, True, False], [False, True, False])
    assert "is right on 1 row where" in paired_sentence(entry, "adapter #1", "baseline")
