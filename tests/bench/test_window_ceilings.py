"""scripts/lncrna_window_ceilings.py: the windowed numbers on hand-made codons, and a run on the in-repo sample."""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
for path in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import lncrna_window_ceilings as ceilings  # noqa: E402
import sequence_baseline  # noqa: E402

from studio.sequences.features import longest_orf  # noqa: E402
from studio.sequences.tokenizers import codon_text  # noqa: E402
from studio.sequences.windows import window_spans  # noqa: E402

SAMPLE = REPO_ROOT / "data" / "samples" / "lncrna_athaliana"
# index:    0      1      2      3      4      5      6      7      8      9      10     11
CODONS = ["GCT", "ATG", "GCT", "GCT", "TAA", "GCT", "ATG", "ATG", "GCT", "TAG", "GCT", "GCT"]


def naive_orf(codons: list[str]) -> int:
    """A plain scan: first ATG opens, next stop closes (stop counted), an ORF open at the end counts to it."""
    best, start = 0, None
    for i, codon in enumerate(codons):
        if start is None and codon == "ATG":
            start = i
        elif start is not None and codon in ("TAA", "TAG", "TGA"):
            best, start = max(best, i - start + 1), None
    return max(best, len(codons) - start) if start is not None else best


def naive_stop_free(codons: list[str]) -> int:
    best = run = 0
    for codon in codons:
        run = 0 if codon in ("TAA", "TAG", "TGA") else run + 1
        best = max(best, run)
    return best


def test_frame_index_reads_windows_exactly():
    frame = ceilings.FrameIndex(CODONS)
    assert frame.stop_count(0, 12) == 2 and frame.stop_count(5, 9) == 0 and frame.stop_count(4, 5) == 1
    assert frame.has_atg(7, 9) and not frame.has_atg(8, 12)
    # ORFs 1..4 (4 codons with the stop) and 6..9 (4; the ATG at 7 is inside it and starts nothing)
    assert frame.orf(0, 12) == 4
    assert frame.orf(0, 3) == 2  # ATG at 1, still open at the window's end: 2 codons seen
    assert frame.orf(7, 12) == 3  # the ATG at 7 opens when 6 is outside the window
    assert frame.orf(10, 12) == 0 and frame.orf(4, 6) == 0
    assert frame.stop_free(0, 12) == 4 and frame.stop_free(5, 9) == 4 and frame.stop_free(4, 5) == 0
    assert frame.stop_free(9, 12) == 2 and frame.stop_free(2, 7) == 2


def test_frame_index_agrees_with_a_plain_scan_on_every_window():
    rng = random.Random(0)
    alphabet = ["ATG", "TAA", "TAG", "TGA", "GCT", "CCA", "GGG", "ACT"]
    for _ in range(30):
        codons = rng.choices(alphabet, weights=[2, 1, 1, 1, 4, 4, 4, 4], k=rng.randint(0, 60))
        frame = ceilings.FrameIndex(codons)
        for start in range(len(codons) + 1):
            for end in range(start, len(codons) + 1):
                window = codons[start:end]
                assert frame.orf(start, end) == naive_orf(window), (codons, start, end)
                assert frame.stop_free(start, end) == naive_stop_free(window)
                assert frame.stop_count(start, end) == sum(c in ("TAA", "TAG", "TGA") for c in window)


def test_window_features_count_the_models_windows():
    all_stops = ["TAA", "TGA", "TAG"]  # shorter than the window: one window, 3 stops
    features = ceilings.window_features([ceilings.FrameIndex(CODONS), ceilings.FrameIndex(all_stops)], 4, 2)
    spans = window_spans(12, 4, 2)
    assert spans == [(0, 4), (2, 6), (4, 8), (6, 10), (8, 12)]
    # stops per window of CODONS: 0, 1, 1, 1, 1; then 3 in the short frame
    assert features["windows"] == len(spans) + 1 == 6
    assert [features[f"stops_le_{k}"] for k in range(4)] == [1, 5, 5, 6]
    assert features["stop_free_atg"] == 1  # (0, 4) holds the ATG at 1
    assert features["window_orf"] == 4  # (6, 10): ATG 6 .. TAG 9
    assert features["window_stop_free"] == 4  # (0, 4) whole
    assert features["free_run"] == 1


def test_a_window_longer_than_the_transcript_sees_the_whole_transcript():
    rows = [json.loads(line) for line in (SAMPLE / "test.jsonl").read_text().splitlines()[:20]]
    for row in rows:
        sequence = row["sequence"]
        frames = [ceilings.FrameIndex(codons) for codons in ceilings.frame_codons(sequence)]
        assert [f.n for f in frames] == [len(codon_text(sequence, k).split()) for k in range(3)]
        whole = ceilings.window_features(frames, 100_000, 100_000)
        transcript = ceilings.transcript_features(sequence)
        assert whole["windows"] == 3
        assert 3 * whole["window_stop_free"] == transcript["stop_free"]
        assert 3 * whole["window_orf"] >= transcript["orf"] == longest_orf(sequence)  # open ORFs count in a window


def test_transcript_features_of_a_hand_made_sequence():
    sequence = "gct" + "AUG" + "GCT" * 5 + "TAA" + "GC"  # lower case and U read as DNA
    features = ceilings.transcript_features(sequence)
    assert features["length"] == 26
    assert features["orf"] == 21  # ATG + 5 codons + TAA
    assert features["stop_free"] == sequence_baseline.longest_stop_free(sequence.upper().replace("U", "T")) >= 21


def test_parse_windows():
    assert ceilings.parse_windows("128:64, 256:128") == [(128, 64), (256, 128)]
    with pytest.raises(argparse.ArgumentTypeError):
        ceilings.parse_windows("128:0")
    with pytest.raises(argparse.ArgumentTypeError):
        ceilings.parse_windows("64:128")


def test_main_on_the_sample_writes_every_number(tmp_path, capsys):
    out = tmp_path / "ceilings.json"
    record = ceilings.main(["--data", str(SAMPLE), "--out", str(out), "--windows", "16:8"])
    saved = json.loads(out.read_text())
    assert saved["rows"] == {"train": 200, "test": 100} and saved["settings"] == [
        {"window": 16, "step": 8, "overlap": 8}
    ]
    assert saved["whole_transcript"].keys() == ceilings.TRANSCRIPT_SETS.keys()
    (setting,) = saved["windows"]
    assert setting["results"].keys() == ceilings.WINDOW_SETS.keys()
    for split in ("train", "test"):
        sequences = [json.loads(line)["sequence"] for line in (SAMPLE / f"{split}.jsonl").read_text().splitlines()]
        expected = sum(len(window_spans(len(codon_text(s, k).split()), 16, 8)) for s in sequences for k in range(3))
        assert setting["windows"][split] == expected
    results = [*saved["whole_transcript"].values(), *setting["results"].values()]
    assert all(0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["auroc"] <= 1.0 for r in results)
    assert saved["whole_transcript"]["log longest ATG ORF (longest_orf)"]["accuracy"] > 0.8  # the ORF signal
    assert record["windows"] == saved["windows"]
    table = capsys.readouterr().out.strip().splitlines()
    assert len(table) == 2 + len(results) and table[0].startswith("| window (codons) |")
