"""scripts/positional_rule_probe.py: its windows separate the classes only by where the ATG sits, and
rotary positions (RoFormer) learn that rule where BERT's learnt absolute positions do not, same budget."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
for path in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import positional_rule_probe as probe  # noqa: E402


def test_longest_atg_orf_by_hand():
    assert probe.longest_atg_orf(["ATG", "AAA", "CCC", "TAA"]) == 3
    assert probe.longest_atg_orf(["AAA", "ATG", "ATG", "CCC", "TGA", "ATG", "GGG"]) == 3  # the first ATG opens it
    assert probe.longest_atg_orf(["CCC", "TAG", "ATG", "GGG"]) == 2  # open to the end of the window
    assert probe.longest_atg_orf(["CCC", "TAG", "GGG"]) == 0


def test_both_classes_hold_the_same_stretch_and_differ_only_in_where_its_atg_is():
    rng = random.Random(0)
    length = 64
    for label in (0, 1):
        for _ in range(200):
            codons, start, end, atg = probe.planted_window(label, length, rng)
            assert len(codons) == length
            assert length // 4 <= end - start <= length // 2  # the planted stretch, whatever the label
            assert codons[start - 1] in probe.STOPS and codons[end] in probe.STOPS
            assert not any(c in probe.STOPS for c in codons[start:end])
            assert [i for i in range(start, end) if codons[i] == "ATG"] == [atg]  # one ATG in the stretch
            if label:
                assert atg == start and probe.longest_atg_orf(codons) >= end - start  # an ORF as long as the stretch
            else:
                assert 3 <= end - atg <= 10  # a short ORF in the same stretch


@pytest.mark.slow
def test_rotary_positions_learn_the_rule_where_absolute_ones_do_not(tmp_path):
    out = tmp_path / "probe.json"
    result = probe.main(["--length", "48", "--steps", "300", "--every", "100", "--out", str(out)])
    accuracy = {run["architecture"]: run["final_accuracy"] for run in result["runs"]}
    assert set(accuracy) == {"bert", "roformer"}
    assert accuracy["roformer"] >= 0.85  # measured 0.965 (seed 0)
    assert accuracy["bert"] <= 0.75  # measured 0.650: near chance after the same 300 steps
    assert json.loads(out.read_text())["runs"][1]["curve"][-1]["step"] == 300


def test_layers_option_trains_one_encoder_per_depth(tmp_path):
    """``--layers`` (repeatable) trains one encoder per depth, each recorded with its depth."""
    result = probe.main(
        ["--arch", "roformer", "--layers", "1", "--layers", "3", "--length", "16", "--steps", "2", "--every", "1"]
        + ["--out", str(tmp_path / "probe.json")]
    )
    assert [(run["architecture"], run["layers"]) for run in result["runs"]] == [("roformer", 1), ("roformer", 3)]
    assert [p["step"] for p in result["runs"][1]["curve"]] == [1, 2]


def test_pooling_option_trains_one_encoder_per_pooling_and_attention_has_its_own_weights(tmp_path, monkeypatch):
    """``--pooling`` (repeatable): each run recorded with its pooling; attention trains the studio's pooler."""
    from studio.sequences import pooling

    made = []
    real = pooling.attention_pooler
    monkeypatch.setattr(pooling, "attention_pooler", lambda hidden: made.append(real(hidden)) or made[-1])
    result = probe.main(
        ["--arch", "roformer", "--pooling", "mean", "--pooling", "attention", "--length", "16", "--steps", "3"]
        + ["--every", "3", "--out", str(tmp_path / "probe.json")]
    )
    assert [run["pooling"] for run in result["runs"]] == ["mean", "attention"]
    (pooler,) = made
    assert pooler.weigher.weight.abs().sum() > 0  # it started at zero: the optimizer trained it
