"""The simple baseline of a classification dataset: logistic regression on hand-made features.

Every accuracy a fine-tuned model reports should stand next to what a simple model gets on
the same split; a model that does not beat this has not learnt the task. Features by what
the text column holds (detected as in the dataset inspection):

- DNA/RNA: k-mer frequencies (k = 1..3 by default), log length, log longest ORF (ATG…stop in
  the three forward frames; optionally the reverse complement too) and the ORF's share of the
  length — coding potential, what separates mRNA from lncRNA;
- protein: amino-acid and dipeptide frequencies, log length;
- other text: TF-IDF of words and word pairs (no scaler: the features are sparse).

The model is scikit-learn's ``LogisticRegression`` behind a ``StandardScaler`` in a Pipeline,
fit on the train rows only and scored on the test rows: accuracy, F1, MCC and AUROC.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from studio.errors import ValidationFailed
from studio.sequences.alphabet import classify_values
from studio.sequences.features import (
    nucleotide_feature_names,
    nucleotide_features,
    protein_feature_names,
    protein_features,
)

MODEL_NAME = "logistic-regression"
MODEL_KEY = f"baseline:{MODEL_NAME}"  # how eval results name the baseline
DETECTION_ROWS = 500  # rows whose text decides the feature set
MAX_ITER = 5000


@dataclass
class BaselineResult:
    """The baseline's test metrics and what it was fit on."""

    metrics: dict[str, float | None]  # accuracy, f1, mcc, auroc (None where undefined)
    features: str  # which feature set: "nucleotide", "protein" or "text"
    feature_count: int
    train_rows: int
    test_rows: int
    skipped_test_rows: int  # test rows whose label the train rows never had
    labels: list[Any]
    positive_label: Any  # the class F1 and AUROC are of (binary); None for several classes
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    confusion: dict[str, Any] = field(default_factory=dict)  # {"labels", "matrix"}: rows true, columns predicted
    roc: list[dict[str, Any]] = field(default_factory=list)  # ROC curve(s): {"label", "fpr", "tpr", "auroc"}
    # Per input test row: right (True), wrong (False), or None where the row was not scored (no text or
    # label, or a label the train rows never had). For paired comparisons with models on the same rows.
    test_correct: list[bool | None] = field(default_factory=list)
    # Per input test row: the label predicted (None where not scored), for the samples table.
    test_predicted: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The result as stored in a job result: small, so without the per-row ``test_correct`` and
        ``test_predicted``.

        One value per test row would grow every stored job result with the test set (hundreds to
        thousands of values) while only the paired comparisons and the samples table, built in the
        same job, read them.
        """
        data = asdict(self)
        data.pop("test_correct")
        data.pop("test_predicted")
        return {"model": MODEL_NAME, **data}


def feature_kind(texts: Sequence[Any]) -> str:
    """``nucleotide``, ``protein`` or ``text``: which feature set suits these values."""
    found = classify_values(list(texts)[:DETECTION_ROWS])
    if found is None:
        return "text"
    return "protein" if found[0] == "protein" else "nucleotide"


def _pipeline(kind: str, ks: Sequence[int], both_strands: bool, seed: int) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    classifier = LogisticRegression(max_iter=MAX_ITER, random_state=seed)
    if kind == "text":
        return Pipeline([("tfidf", TfidfVectorizer(ngram_range=(1, 2), min_df=1)), ("logreg", classifier)])
    if kind == "nucleotide":

        def featurise(texts: Sequence[str]) -> list[list[float]]:
            return [nucleotide_features(t, ks, both_strands) for t in texts]
    else:

        def featurise(texts: Sequence[str]) -> list[list[float]]:
            return [protein_features(t) for t in texts]

    return Pipeline([("features", FunctionTransformer(featurise)), ("scale", StandardScaler()), ("logreg", classifier)])


def _score(
    model: Any, texts: list[str], labels: list[Any]
) -> tuple[dict[str, float | None], Any, dict[str, Any], list[Any]]:
    """Accuracy, F1, MCC, AUROC (``studio.evaluation.classification``), the confusion matrix and ROC curves,
    and the label predicted for each row."""
    from sklearn.metrics import accuracy_score

    from studio.evaluation.classification import classification_report

    predicted = model.predict(texts)
    proba = model.predict_proba(texts)
    # Plain Python values for the JSON job result (sklearn's classes_ are numpy scalars).
    classes = [c.item() if hasattr(c, "item") else c for c in model.classes_]
    index = {c: i for i, c in enumerate(classes)}
    report = classification_report([index[y] for y in labels], proba.tolist(), classes)
    metrics: dict[str, float | None] = {"accuracy": float(accuracy_score(labels, predicted)), **report["metrics"]}
    details = {"confusion": report["confusion"], "roc": report["roc"]}
    return metrics, report["positive_label"], details, [p.item() if hasattr(p, "item") else p for p in predicted]


def _column(
    rows: Sequence[dict], text_field: str, label_field: str, which: str
) -> tuple[list[str], list[Any], list[int]]:
    """Texts, labels and the index in ``rows`` of each usable row (a string text and a label)."""
    texts, labels, indices = [], [], []
    for i, row in enumerate(rows):
        text, label = row.get(text_field), row.get(label_field)
        if isinstance(text, str) and label is not None:
            texts.append(text)
            labels.append(label)
            indices.append(i)
    if not texts:
        raise ValidationFailed(f"the {which} rows have no {text_field!r} text with a {label_field!r} label")
    return texts, labels, indices


def fit_baseline(
    train_rows: Sequence[dict],
    test_rows: Sequence[dict],
    text_field: str = "text",
    label_field: str = "label",
    ks: Sequence[int] = (1, 2, 3),
    both_strands: bool = False,
    seed: int = 0,
) -> BaselineResult:
    """Fit the logistic-regression baseline on ``train_rows`` and score it on ``test_rows``.

    Rows are dicts; rows without a string ``text_field`` or without a ``label_field`` are left
    out, and so are test rows whose label no train row has (counted in ``skipped_test_rows``);
    ``test_correct`` says per test row whether it was predicted right and ``test_predicted`` which
    label it got (both None where left out).
    ``ks`` and ``both_strands`` apply to nucleotide data (see the module docstring). Raises
    ValidationFailed when the train rows hold fewer than two labels or no test row is left.
    """
    started = time.monotonic()
    train_texts, train_labels, _ = _column(train_rows, text_field, label_field, "train")
    test_texts, test_labels, test_indices = _column(test_rows, text_field, label_field, "test")
    labels = sorted(set(train_labels), key=str)
    if len(labels) < 2:
        raise ValidationFailed(f"the train rows hold one label ({labels[0]!r}); a classifier needs at least two")
    known = set(labels)
    kept = [(t, y, i) for t, y, i in zip(test_texts, test_labels, test_indices, strict=True) if y in known]
    if not kept:
        raise ValidationFailed("no test row has a label that the train rows have")
    kind = feature_kind(train_texts)
    model = _pipeline(kind, tuple(ks), both_strands, seed)
    model.fit(train_texts, train_labels)
    metrics, positive, details, predicted = _score(model, [t for t, _, _ in kept], [y for _, y, _ in kept])
    test_correct: list[bool | None] = [None] * len(test_rows)
    test_predicted: list[Any] = [None] * len(test_rows)
    for (_, label, i), guess in zip(kept, predicted, strict=True):
        test_correct[i], test_predicted[i] = guess == label, guess
    if kind == "nucleotide":
        count = len(nucleotide_feature_names(tuple(ks)))
    elif kind == "protein":
        count = len(protein_feature_names())
    else:
        count = len(model.named_steps["tfidf"].vocabulary_)
    settings = {"ks": list(ks), "both_strands": both_strands} if kind == "nucleotide" else {}
    return BaselineResult(
        metrics=metrics,
        features=kind,
        feature_count=count,
        train_rows=len(train_texts),
        test_rows=len(kept),
        skipped_test_rows=len(test_texts) - len(kept),
        labels=labels,
        positive_label=positive,
        seconds=round(time.monotonic() - started, 2),
        settings={**settings, "seed": seed},
        confusion=details["confusion"],
        roc=details["roc"],
        test_correct=test_correct,
        test_predicted=test_predicted,
    )
