"""Features (k-mers, ORF) and the logistic-regression baseline on synthetic and real (sample) sequences."""

from __future__ import annotations

import json
import random

import pytest

from studio.errors import ValidationFailed
from studio.sequences.baseline import fit_baseline
from studio.sequences.features import (
    kmer_frequencies,
    longest_orf,
    longest_orf_span,
    nucleotide_feature_names,
    nucleotide_features,
    reverse_complement,
)


def test_longest_orf_on_hand_made_sequences():
    assert longest_orf("ATGAAATAG") == 9  # ATG AAA TAG
    assert longest_orf("CCATGAAACCCTGA") == 12  # frame 2: ATG AAA CCC TGA
    assert longest_orf("ATGAAAAAA") == 0  # no stop: not an ORF
    assert longest_orf("TAGATGTAA") == 6  # the stop before the ATG does not count
    # Nested ATG inside an open ORF: the ORF runs from the first one.
    assert longest_orf("ATGATGCCCTAA") == 12
    # Two ORFs in different frames: the longer wins.
    assert longest_orf("ATGTAAGATGCCCGGGTGA") == 12
    assert longest_orf("auguuuuaa") == 9  # RNA, lower case
    assert longest_orf("") == 0


def test_longest_orf_span_is_where_longest_orf_sits():
    assert longest_orf_span("CCATGAAACCCTGA") == (2, 14)  # frame 2: ATG at 2, TGA ends at 14
    assert longest_orf_span("ATGTAAGATGCCCGGGTGA") == (7, 19)  # the longer of two ORFs
    assert longest_orf_span("ATGAAAAAA") == (0, 0)  # none
    assert longest_orf_span("ccaugaaauag") == (2, 11)  # RNA, lower case
    for sequence in ("ATGATGCCCTAA", "TAGATGTAA", "GGATGCCCTAGATGAAACCCGGGTAA"):
        start, end = longest_orf_span(sequence)
        assert end - start == longest_orf(sequence)


def test_longest_orf_reverse_strand_only_when_asked():
    forward = "ATGCCCGGGAAATTTTAG"  # 18 nt ORF
    backward = reverse_complement(forward)
    assert reverse_complement(backward) == forward
    assert longest_orf(backward) < 18
    assert longest_orf(backward, both_strands=True) == 18


def test_kmer_frequencies_count_overlapping_kmers_and_skip_n():
    values = kmer_frequencies("AACN", ks=(1, 2))
    ones, twos = values[:4], values[4:]
    assert ones == [2 / 3, 1 / 3, 0, 0]  # N is left out of the total
    # 2-mers AA, AC (CN skipped): order AA AC AG AT CA ...
    assert twos[0] == 0.5 and twos[1] == 0.5 and sum(twos) == 1
    assert len(nucleotide_features("ACGT")) == len(nucleotide_feature_names()) == 4 + 16 + 64 + 3


def gc_rows(n, seed):
    """Label 1: GC-rich; label 0: AT-rich; lengths overlapping so length alone does not tell them apart."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        gc = 0.6 if label else 0.4
        length = rng.randint(150, 300)
        seq = "".join(rng.choice("GC") if rng.random() < gc else rng.choice("AT") for _ in range(length))
        rows.append({"text": seq, "label": label})
    return rows


def test_baseline_beats_chance_clearly_on_a_separable_set():
    result = fit_baseline(gc_rows(120, 0), gc_rows(80, 1))
    assert result.features == "nucleotide"
    assert result.metrics["accuracy"] >= 0.9
    assert result.metrics["auroc"] >= 0.95
    assert result.metrics["mcc"] >= 0.8
    assert result.test_rows == 80 and result.train_rows == 120


def test_baseline_is_at_chance_on_random_labels():
    rows = gc_rows(200, 2)
    rng = random.Random(3)
    for row in rows:
        row["label"] = rng.randint(0, 1)  # labels unrelated to the sequence
    result = fit_baseline(rows[:120], rows[120:])
    assert 0.3 <= result.metrics["accuracy"] <= 0.7


def test_baseline_on_the_lncrna_sample(samples_dir):
    folder = samples_dir / "lncrna_athaliana"
    train, test = ([json.loads(line) for line in (folder / f"{name}.jsonl").open()] for name in ("train", "test"))
    result = fit_baseline(train, test, text_field="sequence", label_field="label")
    assert (result.train_rows, result.test_rows, result.labels) == (200, 100, [0, 1])
    # Coding potential and length separate lncRNA from mRNA well above a coin toss.
    assert result.metrics["accuracy"] >= 0.65
    assert result.metrics["auroc"] >= 0.75
    assert set(result.metrics) == {"accuracy", "f1", "mcc", "auroc"}
    json.dumps(result.to_dict())  # storable as a job result


def test_baseline_on_text_and_protein_and_refusals():
    text_rows = [{"text": f"{w} movie really {w}", "label": w} for w in ["good", "bad"] * 20]
    assert fit_baseline(text_rows[:30], text_rows[30:]).features == "text"
    rng = random.Random(0)
    protein = [
        {"text": "".join(rng.choice("KRH" if i % 2 else "DE") + rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(40)),
         "label": i % 2}
        for i in range(60)
    ]  # fmt: skip
    result = fit_baseline(protein[:40], protein[40:])
    assert result.features == "protein" and result.metrics["accuracy"] >= 0.9
    with pytest.raises(ValidationFailed, match="at least two"):
        fit_baseline([{"text": "ACGT" * 10, "label": 0}] * 4, text_rows)
    unseen = [{"text": "ACGT" * 10, "label": 7}]
    with pytest.raises(ValidationFailed, match="no test row"):
        fit_baseline(gc_rows(20, 0), unseen)
