"""scripts/coding_potential_ceiling.py: richer hand-made coding-potential features, fit on train rows only."""

from __future__ import annotations

import json
import math
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
for path in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import coding_potential_ceiling as ceiling  # noqa: E402

CODONS = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"]


def test_transcript_features_by_hand():
    #          5' UTR (5 nt) | ATG GCC GGG TAA | 3' UTR (4 nt)
    dna = "CCACC" + "ATGGCCGGGTAA" + "TTTT"
    features = ceiling.transcript_features(dna)
    assert features["log_orf"] == pytest.approx(math.log1p(12))
    assert features["orf_share"] == pytest.approx(12 / 21)
    assert features["log_utr5"] == pytest.approx(math.log1p(5))
    assert features["log_utr3"] == pytest.approx(math.log1p(4))
    assert features["kozak_minus3"] == 1.0  # A three before the ATG (CC[A]CC ATG)
    assert features["kozak_plus4"] == 1.0  # G right after it (ATG [G]CC)
    assert features["orf_gc3"] == pytest.approx(3 / 4)  # third letters of ATG GCC GGG TAA: G C G A
    no_orf = ceiling.transcript_features("GGGATGGGG")  # an ATG without a stop is no ORF
    assert no_orf["log_orf"] == 0.0 and no_orf["kozak_plus4"] == 0.0 and no_orf["kozak_minus3"] == 0.0


def test_hexamer_score_reads_codon_usage_in_the_orf():
    coding, other = Counter({"ATGGCC": 50, "GCCGCC": 50}), Counter({"ATGTTT": 50, "TTTTTT": 50})
    assert ceiling.orf_hexamers("ATGGCCGCCTAA", 0, 12) == ["ATGGCC", "GCCGCC", "GCCTAA"]
    assert ceiling.hexamer_score("ATGGCCGCCTAA", (coding, other)) > 0  # coding-like usage
    assert ceiling.hexamer_score("ATGTTTTTTTAA", (coding, other)) < 0
    assert ceiling.hexamer_score("CCCCCC", (coding, other)) == 0.0  # no ORF, no evidence


def random_transcript(rng: random.Random, coding: bool) -> str:
    """Random letters with (coding) a long ORF in the middle, else none longer than a few codons."""
    filler = "".join(rng.choice("ACGT") for _ in range(300))
    if not coding:
        return filler
    sense = [c for c in CODONS if c not in ("TAA", "TAG", "TGA")]
    body = [rng.choice(sense) for _ in range(150)]
    return filler[:100] + "ATG" + "".join(body) + "TAA" + filler[100:]


def test_the_orf_pair_separates_a_long_orf_class_and_train_hexamer_scores_are_cross_fitted():
    rng = random.Random(0)
    train = [(random_transcript(rng, i % 2 == 0), "mRNA" if i % 2 == 0 else "lncRNA") for i in range(60)]
    test = [(random_transcript(rng, i % 2 == 0), "mRNA" if i % 2 == 0 else "lncRNA") for i in range(40)]
    result = ceiling.ceiling(train, test)
    assert result["coding_label"] == "mRNA"  # found from the ORF lengths, not the label's name
    assert result["rows"]["logistic: longest-ORF pair"]["accuracy"] >= 0.95
    assert {"logistic: all", "gradient boosting: all", "logistic: pair + hexamer"} <= set(result["rows"])

    # A train row's hexamer score comes from tables without it: it differs from the full tables' score.
    train_rows, _ = ceiling.feature_rows(train, test, "mRNA")
    full = ceiling.hexamer_tables(train, "mRNA")
    assert train_rows[0]["hexamer"] != pytest.approx(ceiling.hexamer_score(train[0][0], full))


def test_main_on_the_in_repo_sample_writes_every_row(tmp_path):
    out = tmp_path / "ceiling.json"
    result = ceiling.main(["--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["train_rows"] == 200 and saved["test_rows"] == 100
    assert set(saved["rows"]) == set(result["rows"])
    assert all(0.5 <= row["accuracy"] <= 1.0 for row in saved["rows"].values())
