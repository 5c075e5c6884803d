"""F1, MCC, AUROC, confusion matrix and ROC curves of class probabilities, checked by hand; and the
Evaluate tab's ROC and confusion charts built from such a result (baseline included)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from studio.evaluation.classification import classification_report


def test_binary_metrics_by_hand():
    # truth 0 0 0 1 1 1; predicted (p1 > 0.5) 0 0 1 1 1 0: TP 2, FP 1, FN 1, TN 2
    expected = [0, 0, 0, 1, 1, 1]
    p1 = [0.1, 0.2, 0.7, 0.9, 0.6, 0.4]
    report = classification_report(expected, [[1 - p, p] for p in p1], ["mRNA", "lncRNA"])
    m = report["metrics"]
    assert m["f1"] == pytest.approx(2 / 3)  # precision 2/3, recall 2/3
    assert m["mcc"] == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))
    # 9 positive/negative pairs; ranked right: all but (0.7 vs 0.4) and (0.7 vs 0.6) -> 7/9
    assert m["auroc"] == pytest.approx(7 / 9)
    assert report["confusion"] == {"labels": ["mRNA", "lncRNA"], "matrix": [[2, 1], [1, 2]]}
    [curve] = report["roc"]
    assert curve["label"] == "lncRNA" and curve["auroc"] == m["auroc"]
    assert curve["fpr"][0] == 0.0 and curve["fpr"][-1] == 1.0 and curve["tpr"][-1] == 1.0
    assert report["positive_label"] == "lncRNA"


def test_one_class_only_has_no_auroc_and_many_classes_are_macro():
    report = classification_report([1, 1], [[0.2, 0.8], [0.6, 0.4]], [0, 1])
    assert report["metrics"]["auroc"] is None and report["roc"] == []
    assert report["confusion"]["matrix"] == [[0, 0], [1, 1]]
    three = classification_report(
        [0, 1, 2, 2], [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]], "abc"
    )
    assert three["metrics"]["f1"] == pytest.approx((0.8 * 0 + 2 / 3 + 1 + 2 / 3) / 3)  # a: P 1/2 R 1 -> 2/3
    assert len(three["roc"]) == 3 and [c["label"] for c in three["roc"]] == ["a", "b", "c"]
    assert three["metrics"]["auroc"] == pytest.approx(sum(c["auroc"] for c in three["roc"]) / 3)
    assert three["positive_label"] is None


def test_long_curves_are_thinned():
    import random

    rng = random.Random(0)
    n = 5000
    expected = [i % 2 for i in range(n)]
    proba = [[1 - p, p] for p in (rng.random() for _ in range(n))]
    [curve] = classification_report(expected, proba, [0, 1])["roc"]
    assert len(curve["fpr"]) <= 201 and curve["fpr"][-1] == 1.0


def _result():
    from studio.evaluation.comparison import compare_models

    lora = classification_report([0, 0, 1, 1], [[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]], ["0", "1"])
    base = classification_report([0, 0, 1, 1], [[0.6, 0.4], [0.7, 0.3], [0.4, 0.6], [0.8, 0.2]], ["0", "1"])
    models = [
        {"key": "adapter:3", "metrics": {"accuracy": 0.75, **lora["metrics"]}, **lora},
        {"key": "baseline:logistic-regression", "metrics": {"accuracy": 0.75, **base["metrics"]}, **base},
    ]
    return {"task": "classification", "models": models, "comparison": compare_models(models)}


def test_roc_and_confusion_charts_show_every_model_with_the_baseline():
    from studio.charts_classification import confusion_figure, roc_figure

    result = _result()
    roc = roc_figure(result)
    names = [t.name for t in roc.data]
    assert names[0].startswith("adapter #3 (AUROC 1.000") and names[1].startswith("baseline logistic-regression")
    assert names[-1] == "chance"
    assert "positive class 1" in roc.layout.title.text
    heat = confusion_figure(result)
    assert [a.text for a in heat.layout.annotations] == ["adapter #3", "baseline logistic-regression"]
    assert [list(map(list, t.z)) for t in heat.data] == [[[1, 1], [0, 2]], [[2, 0], [1, 1]]]
    # a text-generation result has neither
    empty = {"task": "causal-lm", "models": [{"key": "adapter:1", "metrics": {"eval_loss": 1.0}}]}
    assert not roc_figure(empty).data and not confusion_figure(empty).data


def test_evaluate_tab_shows_the_charts_only_for_classification():
    from app.tab_evaluate import show_result

    def services(result):
        return SimpleNamespace(jobs=SimpleNamespace(get=lambda _id: SimpleNamespace(result=result)))

    shown = show_result(services(_result()), 7)
    assert shown["roc"]["visible"] is True and shown["confusion"]["visible"] is True
    assert len(shown["roc"]["value"].data) == 3
    text = {"task": "causal-lm", "models": [{"key": "adapter:1", "metrics": {"eval_loss": 1.0}}], "comparison": []}
    hidden = show_result(services(text), 8)
    assert hidden["roc"]["visible"] is False and hidden["confusion"]["visible"] is False
    # a result without sample answers shows no empty samples table under its charts
    assert shown["samples"]["visible"] is False
    with_samples = {**text, "sample_table": [{"prompt": "2+3?", "reference": "5", "answers": {"adapter:1": {}}}]}
    assert show_result(services(with_samples), 9)["samples"]["visible"] is True
