"""scripts/sequence_baseline.py --ablation: the baseline's model refit on feature subsets (in-repo lncRNA sample)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
for path in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import sequence_baseline  # noqa: E402

from studio.sequences.baseline import fit_baseline  # noqa: E402
from studio.sequences.features import nucleotide_feature_names  # noqa: E402

SAMPLE = REPO_ROOT / "data" / "samples" / "lncrna_athaliana"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (SAMPLE / name).read_text().splitlines() if line.strip()]


def test_subsets_name_the_right_columns():
    names = nucleotide_feature_names((1, 2, 3))
    subsets = sequence_baseline.ablation_subsets((1, 2, 3))
    assert len(subsets["all features"]) == len(names) == 87
    assert len(subsets["k-mer frequencies only"]) == 84
    assert {len(names[i]) for i in subsets["3-mer frequencies only"]} == {3}
    assert [names[i] for i in subsets["longest ORF only (log ORF length + ORF share)"]] == [
        "log_longest_orf",
        "orf_share",
    ]
    assert "3-mer frequencies only" not in sequence_baseline.ablation_subsets((1, 2))


def test_ablation_reproduces_the_baseline_and_finds_the_orf_signal(capsys, monkeypatch):
    train, test = rows("train.jsonl"), rows("test.jsonl")
    results = sequence_baseline.ablation(train, test, "sequence", "label", (1, 2, 3))
    baseline = fit_baseline(train, test, text_field="sequence", label_field="label")
    # all features: the same model as the baseline, so the same numbers
    assert results["all features"]["accuracy"] == pytest.approx(baseline.metrics["accuracy"])
    assert results["all features"]["auroc"] == pytest.approx(baseline.metrics["auroc"], abs=1e-4)
    orf = results["longest ORF only (log ORF length + ORF share)"]
    assert orf["features"] == 2
    assert orf["accuracy"] > results["k-mer frequencies only"]["accuracy"] + 0.1  # the ORF carries the signal

    monkeypatch.setattr(sys, "argv", ["sequence_baseline.py", "--ablation", "--data", str(SAMPLE)])
    sequence_baseline.main()
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("| features |") and len(table) == 2 + len(results)
    assert f"| {results['log length only']['accuracy']:.3f} |" in table[5]
    assert any("514-nt window" in name for name in results) and any("66-nt window" in name for name in results)


def test_a_window_sees_at_most_its_own_length_of_an_open_frame():
    filler = "TAAA" * 60  # TAA every 4 nt: a stop in every frame within 12 nt
    orf = "GCT" * 100  # 300 nt without a stop in frame 0
    sequence = filler + orf + filler
    assert sequence_baseline.longest_stop_free(filler) < 12
    assert sequence_baseline.longest_stop_free(sequence) >= 300
    short = sequence_baseline.window_stop_free(sequence, 66, 56)
    assert 60 <= short <= 66  # some 66-nt window lies inside the ORF, none can hold more of it
    assert sequence_baseline.window_stop_free(filler[:100] + orf + filler, 514, 448) >= 300  # inside window 1
    assert sequence_baseline.window_stop_free(sequence, 514, 448) < 300  # 240-540 nt: split by both windows
    assert sequence_baseline.window_stop_free(filler + filler, 514, 448) < 12
    # the last window is flush with the end: an ORF at the very end is seen
    assert sequence_baseline.window_stop_free(filler * 3 + orf, 514, 448) >= 300
