"""Metric functions against hand-computed values."""

from __future__ import annotations

import math

import pytest

from studio.evaluation import metrics as M


@pytest.mark.parametrize(
    ("text", "expected"),
    [("$1,234.50", "1234.5"), ("18.0", "18"), ("18.", "18"), ("-0", "0"), ("0.50", "0.5"), ("1,000,000", "1000000")],
)
def test_normalise_number(text, expected):
    assert M.normalise_number(text) == expected


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips.\nSo 48+24 = <<48+24=72>>72.\n#### 72", "72"),
        ("He pays $<<2*500=1000>>1000.\n#### $1,000", "1000"),
        ("#### -3", "-3"),
        ("#### 18.00", "18"),
        ("#### 0.5 of the cake", "0.5"),
        ("first #### 4\nthen #### 5", "5"),  # the last marker wins
        ("no marker, the answer is 7 not 8", "8"),  # without ####: the last number
        ("no number at all", None),
    ],
)
def test_reference_answer(reference, expected):
    assert M.reference_answer(reference) == expected


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("16 - 3 - 4 = 9 eggs, 9 * 2 = $18.", "18"),
        ("16-3-4=9", "9"),  # minus signs between digits are operators, not signs
        ("The total is 1,000.", "1000"),
        ("values 3,4", "4"),  # a comma that is not a thousands separator splits numbers
        ("It is -5 degrees", "-5"),
        ("#### 72", "72"),
        ("x = 2.50 dollars", "2.5"),
        ("I don't know", None),
    ],
)
def test_predicted_answer_is_the_last_number(prediction, expected):
    assert M.predicted_answer(prediction) == expected


def test_exact_match_gsm8k_style():
    reference = "She makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
    assert M.exact_match("So the answer is $18.00", reference)
    assert M.exact_match("#### 18", reference)
    assert not M.exact_match("18 or maybe 19", reference)  # the LAST number counts
    assert not M.exact_match("no idea", reference)
    # A reference without any number is compared as plain text (case and spacing ignored).
    assert M.exact_match("  Paris ", "paris")
    assert not M.exact_match("Paris, France", "paris")


def test_exact_match_rate():
    assert M.exact_match_rate(["#### 1", "2", "x"], ["#### 1", "#### 3", "#### 4"]) == pytest.approx(1 / 3)


def test_lcs_length_textbook_example():
    # CLRS 15.4: LCS("ABCBDAB", "BDCABA") = 4 (e.g. "BCBA").
    assert M.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert M.lcs_length([], ["a"]) == 0


def test_rouge_l_by_hand():
    # LCS(the cat lay on a mat | the cat sat on the mat) = the cat on mat = 4; P = R = 4/6.
    assert M.rouge_l("the cat lay on a mat", "the cat sat on the mat") == pytest.approx(2 / 3)
    # LCS = 2, P = 2/2, R = 2/6: F1 = 2·1·(1/3) / (4/3) = 1/2.
    assert M.rouge_l("a b", "a b c d e f") == pytest.approx(0.5)
    # Order matters: LCS("b a", "a b") = 1, P = R = 1/2.
    assert M.rouge_l("b a", "a b") == pytest.approx(0.5)
    assert M.rouge_l("The  CAT", "the cat") == 1.0  # lower-cased whitespace tokens
    assert M.rouge_l("", "") == 1.0
    assert M.rouge_l("", "x") == 0.0
    assert M.rouge_l("x y", "z") == 0.0


def test_rouge_l_mean():
    assert M.rouge_l_mean(["a b", "x"], ["a b c d e f", "x"]) == pytest.approx((0.5 + 1.0) / 2)


def test_accuracy():
    assert M.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    with pytest.raises(ValueError):
        M.accuracy([1], [1, 0])
    with pytest.raises(ValueError):
        M.accuracy([], [])


def test_perplexity():
    assert M.perplexity(0.0) == 1.0
    assert M.perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert M.perplexity(1e6) == math.inf
