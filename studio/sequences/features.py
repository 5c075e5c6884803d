"""Hand-made features of sequences: k-mer frequencies, length and the longest open reading frame.

These are what separates coding from non-coding transcripts without any learning of
representations (coding potential: codon usage, ORF length and its share of the transcript,
length); the logistic-regression baseline (:mod:`studio.sequences.baseline`) reads them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from functools import cache

from studio.sequences.alphabet import AMINO_ACIDS, BASES, to_dna

START = "ATG"
STOPS = frozenset({"TAA", "TAG", "TGA"})
_COMPLEMENT = str.maketrans("ACGTN", "TGCAN")


def reverse_complement(sequence: str) -> str:
    """The reverse complement of a DNA sequence (ambiguous letters stay as they are, reversed)."""
    return sequence.translate(_COMPLEMENT)[::-1]


def longest_orf(sequence: str, both_strands: bool = False) -> int:
    """Length in nucleotides (stop codon included) of the longest ATG…stop ORF in the 3 forward frames.

    An ORF starts at an ``ATG`` and ends at the first in-frame ``TAA``/``TAG``/``TGA``; an
    ATG with no in-frame stop before the end does not count (a coding sequence ends with a stop,
    and a long stop-free stretch in a short transcript is more often an artefact). Nested ATGs
    inside an open ORF do not start a new one, so the longest is always the one from the first ATG.
    RNA (U) and lower case are read as DNA. ``both_strands`` also searches the 3 frames of the
    reverse complement (for sequences of unknown orientation; transcripts are given sense-strand).
    0 when there is none.
    """
    dna = to_dna(sequence)
    best = _longest_forward(dna)
    if both_strands:
        best = max(best, _longest_forward(reverse_complement(dna)))
    return best


def _longest_forward(dna: str) -> int:
    start, end = longest_orf_span(dna)
    return end - start


def longest_orf_span(sequence: str) -> tuple[int, int]:
    """``(start, end)`` of :func:`longest_orf` in the 3 forward frames: the ATG's index and one past its stop.

    The first of equally long ORFs (frame 0 first); ``(0, 0)`` when there is none.
    """
    dna = to_dna(sequence)
    best = (0, 0)
    for frame in range(3):
        start = -1
        for i in range(frame, len(dna) - 2, 3):
            codon = dna[i : i + 3]
            if start < 0:
                if codon == START:
                    start = i
            elif codon in STOPS:
                if i + 3 - start > best[1] - best[0]:
                    best = (start, i + 3)
                start = -1
    return best


def kmer_names(ks: Sequence[int], alphabet: str = BASES) -> list[str]:
    """Feature names of :func:`kmer_frequencies`, in its order."""
    return ["".join(p) for k in ks for p in itertools.product(alphabet, repeat=k)]


def kmer_frequencies(sequence: str, ks: Sequence[int], alphabet: str = BASES) -> list[float]:
    """For each k in ``ks``, the share of each k-mer among the sequence's overlapping k-mers.

    k-mers holding a letter outside ``alphabet`` (N, ambiguity codes) are left out of both the
    counts and the total. Each k's block sums to 1 (all zeros when the sequence has no k-mer).
    """
    text = to_dna(sequence) if alphabet == BASES else sequence.upper()
    values: list[float] = []
    for k in ks:
        index = _kmer_index(alphabet, k)
        counts = [0] * len(index)
        total = 0
        for i in range(len(text) - k + 1):
            position = index.get(text[i : i + k])
            if position is not None:
                counts[position] += 1
                total += 1
        values.extend(c / total if total else 0.0 for c in counts)
    return values


@cache
def _kmer_index(alphabet: str, k: int) -> dict[str, int]:
    return {"".join(p): i for i, p in enumerate(itertools.product(alphabet, repeat=k))}


def nucleotide_features(sequence: str, ks: Sequence[int] = (1, 2, 3), both_strands: bool = False) -> list[float]:
    """k-mer frequencies, then log length, log longest ORF and the ORF's share of the length."""
    length = len(to_dna(sequence))
    orf = longest_orf(sequence, both_strands)
    return [
        *kmer_frequencies(sequence, ks),
        math.log1p(length),
        math.log1p(orf),
        orf / length if length else 0.0,
    ]


def nucleotide_feature_names(ks: Sequence[int] = (1, 2, 3)) -> list[str]:
    """Names of :func:`nucleotide_features`, in its order."""
    return [*kmer_names(ks), "log_length", "log_longest_orf", "orf_share"]


def protein_features(sequence: str, ks: Sequence[int] = (1, 2)) -> list[float]:
    """Amino-acid (and dipeptide) frequencies, then log length."""
    return [*kmer_frequencies(sequence, ks, AMINO_ACIDS), math.log1p(len(sequence.strip()))]


def protein_feature_names(ks: Sequence[int] = (1, 2)) -> list[str]:
    """Names of :func:`protein_features`, in its order."""
    return [*kmer_names(ks, AMINO_ACIDS), "log_length"]
