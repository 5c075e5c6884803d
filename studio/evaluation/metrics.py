"""Metric functions: pure Python, no model and no dependency beyond the standard library.

Definitions (every score is a fraction in [0, 1], averaged over examples):

- ``exact_match``: GSM8K style. The reference's answer is the first number after its
  last ``####`` (or its last number when it has no ``####``); the prediction's answer
  is the LAST number it contains. Both are normalised (thousands commas, ``$`` and a
  trailing ``.0`` dropped: ``$1,000.00`` == ``1000``) and compared. A reference with
  no number at all is compared as whitespace-collapsed, lower-cased text instead.
- ``rouge_l``: ROUGE-L F1 (beta = 1) on lower-cased whitespace tokens, from the
  longest common subsequence: P = LCS/len(prediction), R = LCS/len(reference).
- ``accuracy``: share of predicted labels equal to the reference labels.
- ``perplexity``: exp(mean token cross-entropy in nats).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

# A minus sign counts only when it does not follow a word character or a dot, so the
# "16-3-4" of a worked solution reads as 16, 3, 4 rather than 16, -3, -4. Commas are
# accepted only as thousands separators, so "3,4" is two numbers, not 34.
NUMBER_RE = re.compile(r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
ANSWER_MARKER = "####"


def normalise_number(text: str) -> str:
    """Canonical text of a number: no ``$``/commas/spaces, no trailing zeros after the point.

    >>> normalise_number("$1,234.50"), normalise_number("18.0"), normalise_number("-0")
    ('1234.5', '18', '0')
    """
    cleaned = text.strip().replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return cleaned
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def numbers_in(text: str) -> list[str]:
    """Every number in ``text``, in order, as written (e.g. ``["1,000", "2.5"]``)."""
    return NUMBER_RE.findall(text or "")


def reference_answer(reference: str) -> str | None:
    """The normalised answer of a GSM8K-style reference, or None when it holds no number."""
    text = reference or ""
    if ANSWER_MARKER in text:
        found = numbers_in(text.rsplit(ANSWER_MARKER, 1)[1])
        if found:
            return normalise_number(found[0])
    found = numbers_in(text)
    return normalise_number(found[-1]) if found else None


def predicted_answer(prediction: str) -> str | None:
    """The normalised LAST number of a prediction, or None when it has none."""
    found = numbers_in(prediction)
    return normalise_number(found[-1]) if found else None


def _plain(text: str) -> str:
    return " ".join((text or "").lower().split())


def exact_match(prediction: str, reference: str) -> bool:
    """True when the prediction's final number equals the reference's answer (see module doc)."""
    expected = reference_answer(reference)
    if expected is None:
        return _plain(prediction) == _plain(reference)
    return predicted_answer(prediction) == expected


def tokens(text: str) -> list[str]:
    """ROUGE tokens: lower-cased, split on whitespace."""
    return (text or "").lower().split()


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a)·len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of one prediction against one reference; two empty texts score 1."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred and not ref:
        return 1.0
    common = lcs_length(pred, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def accuracy(predicted: Sequence, expected: Sequence) -> float:
    """Share of positions where ``predicted`` equals ``expected`` (same length, at least one)."""
    if len(predicted) != len(expected):
        raise ValueError(f"{len(predicted)} predictions for {len(expected)} labels")
    if not expected:
        raise ValueError("accuracy of zero examples is undefined")
    return sum(p == e for p, e in zip(predicted, expected, strict=True)) / len(expected)


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; raises on an empty sequence rather than inventing a score."""
    if not values:
        raise ValueError("mean of zero values is undefined")
    return float(sum(values)) / len(values)


def exact_match_rate(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean exact match over pairs."""
    return mean([float(exact_match(p, r)) for p, r in zip(predictions, references, strict=True)])


def rouge_l_mean(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 over pairs."""
    return mean([rouge_l(p, r) for p, r in zip(predictions, references, strict=True)])


def perplexity(mean_loss: float) -> float:
    """exp(mean token loss); ``inf`` when that overflows a float (a diverged model)."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf
