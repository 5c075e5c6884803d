"""Classification metrics beyond accuracy: F1, MCC, AUROC, the confusion matrix and ROC curves.

One function for every classifier the studio scores (a fine-tuned model in the eval job, the
logistic-regression baseline, the scripts), so their numbers mean the same thing:

- classes are given in head order; a prediction is the argmax of the class probabilities;
- binary (two classes): F1 and AUROC are of the second class (index 1, the "positive" one: for
  0/1 labels the 1s); ROC is one curve of that class's probability;
- more classes: macro F1 and macro one-vs-rest AUROC; one ROC curve per class (one vs rest);
- MCC is scikit-learn's multi-class MCC (binary MCC for two classes);
- AUROC is None when the scored rows hold fewer than two classes (binary) or not every class
  (more), since there is nothing to rank then.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ROC_POINTS = 201  # at most this many points per stored curve (the job result stays small)


def _thin(values: list[float], keep: list[int]) -> list[float]:
    return [round(float(values[i]), 5) for i in keep]


def _curve(truth: Sequence[bool], score: Sequence[float]) -> dict[str, list[float]]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(list(truth), list(score))
    n = len(fpr)
    keep = (
        list(range(n))
        if n <= ROC_POINTS
        else sorted({round(i * (n - 1) / (ROC_POINTS - 1)) for i in range(ROC_POINTS)})
    )
    return {"fpr": _thin(list(fpr), keep), "tpr": _thin(list(tpr), keep)}


def classification_report(
    expected: Sequence[int], probabilities: Sequence[Sequence[float]], labels: Sequence[Any]
) -> dict[str, Any]:
    """Metrics, confusion matrix and ROC curves of class ``probabilities`` (rows × classes) against ``expected``.

    ``expected`` holds class indices into ``labels`` (head order). Returns ``{"metrics": {f1,
    mcc, auroc}, "confusion": {"labels", "matrix"}, "roc": [{"label", "fpr", "tpr", "auroc"}],
    "positive_label"}``; ``matrix[i][j]`` counts rows of class i predicted as class j.
    """
    import numpy as np
    from sklearn.metrics import confusion_matrix, f1_score, matthews_corrcoef, roc_auc_score

    if len(expected) != len(probabilities):
        raise ValueError(f"{len(probabilities)} probability rows for {len(expected)} labels")
    if not expected:
        raise ValueError("metrics of zero examples are undefined")
    proba = np.asarray(probabilities, dtype=float)
    classes = list(range(len(labels)))
    truth = np.asarray(expected, dtype=int)
    predicted = proba.argmax(-1)
    binary = len(classes) == 2
    present = set(truth.tolist())
    names = [str(label) for label in labels]
    if binary:
        f1 = f1_score(truth, predicted, pos_label=1, average="binary", zero_division=0)
    else:
        f1 = f1_score(truth, predicted, labels=classes, average="macro", zero_division=0)
    metrics: dict[str, float | None] = {
        "f1": float(f1),
        "mcc": float(matthews_corrcoef(truth, predicted)),
        "auroc": None,
    }
    roc: list[dict[str, Any]] = []
    if binary and len(present) == 2:
        metrics["auroc"] = float(roc_auc_score(truth == 1, proba[:, 1]))
        roc.append({"label": names[1], "auroc": metrics["auroc"], **_curve(truth == 1, proba[:, 1])})
    elif not binary and present == set(classes):
        # Probabilities renormalised: roc_auc_score's multi-class form insists that rows sum to 1.
        normalised = proba / proba.sum(-1, keepdims=True)
        metrics["auroc"] = float(roc_auc_score(truth, normalised, multi_class="ovr", labels=classes))
        for c in classes:
            auc = float(roc_auc_score(truth == c, proba[:, c]))
            roc.append({"label": names[c], "auroc": auc, **_curve(truth == c, proba[:, c])})
    matrix = confusion_matrix(truth, predicted, labels=classes)
    return {
        "metrics": metrics,
        "confusion": {"labels": names, "matrix": matrix.tolist()},
        "roc": roc,
        "positive_label": labels[1] if binary else None,
    }


def softmax(logits: Any) -> list[list[float]]:
    """Class probabilities of logits rows (a list or tensor, rows × classes)."""
    import torch

    return torch.softmax(torch.as_tensor(logits, dtype=torch.float32), dim=-1).tolist()
