"""Biological sequence alphabets: which letters are bases, ambiguity codes or unknown, and what a column holds.

Rules (shared by the tokenizers, the detection and the baseline so they cannot disagree):

- Case does not matter: every sequence is upper-cased first (soft-masked repeats come in lower case).
- RNA is read as DNA: ``U`` becomes ``T``, so one nucleotide vocabulary serves both.
- The IUPAC ambiguity codes ``N R Y S W K M B D H V`` each stand for "one of several bases"; the
  tokenizers map all of them to ``N`` (one token for "a base we do not know") and the report counts
  each code separately so the user sees what the file holds.
- Any other character (digits, ``-`` gaps, ``*``, ``.``) is *unknown*: ``[UNK]`` in the tokenizers,
  counted in the report. Whitespace inside a value (FASTA line breaks) is dropped.
- Proteins: the 20 amino acids plus ``X B Z U O`` (X unknown, B Asx, Z Glx, U selenocysteine,
  O pyrrolysine) are tokens; ``X B Z`` are reported as ambiguous, anything else as unknown.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

BASES = "ACGT"
IUPAC_AMBIGUOUS = "NRYSWKMBDHV"
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
PROTEIN_EXTRA = "XBZUO"
PROTEIN_AMBIGUOUS = "XBZ"
PROTEIN_LETTERS = AMINO_ACIDS + PROTEIN_EXTRA

KINDS = ("dna", "rna", "protein")
# k proposed for nucleotide data: codon-sized k-mers read coding potential (codon usage), which is what
# separates lncRNA from mRNA, and a 64-word vocabulary is learnt from little data (k = 6, DNABERT's
# choice, has 4,096 words). k = 1 (one token per nucleotide) is the other sensible choice.
SUGGESTED_K = 3

_WHITESPACE = re.compile(r"\s+")

# Detection thresholds over a sample of a column.
MIN_MEAN_LENGTH = 20  # shorter strings are words or codes, not sequences worth a tokenizer
MIN_SHARE = 0.95  # share of characters that must belong to the alphabet
MIN_ROWS_SHARE = 0.9  # share of rows that must look like sequences (empty/odd rows are tolerated)


def clean(sequence: str) -> str:
    """Upper-cased with whitespace (FASTA line breaks) removed; letters otherwise unchanged."""
    return _WHITESPACE.sub("", sequence).upper()


def to_dna(sequence: str) -> str:
    """:func:`clean`, then ``U`` → ``T`` (RNA read as DNA)."""
    return clean(sequence).replace("U", "T")


@dataclass
class LetterReport:
    """What a column holds beyond the plain alphabet: counts per letter and how many rows have any."""

    kind: str
    rows: int = 0
    letters: dict[str, int] = field(default_factory=dict)  # ambiguous/unknown letter -> occurrences
    ambiguous: list[str] = field(default_factory=list)  # which of ``letters`` are ambiguity codes
    rows_with_ambiguous: int = 0
    rows_with_unknown: int = 0
    rows_lowercase: int = 0  # rows with lower-case letters (upper-cased before tokenising)
    rows_with_u: int = 0  # nucleotide rows holding U (read as T)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for the dataset preview, e.g. ``N ×3 in 1 of 100 rows; …``."""
        if not self.rows:
            return "no sequences"
        parts = []
        for letter, count in sorted(self.letters.items(), key=lambda item: -item[1]):
            tag = "ambiguous" if letter in self.ambiguous else "unknown"
            parts.append(f"{letter!r} ×{count} ({tag})")
        text = ", ".join(parts) if parts else "no ambiguous or unknown letters"
        if self.rows_with_ambiguous or self.rows_with_unknown:
            text += (
                f"; rows with ambiguity codes: {self.rows_with_ambiguous}, with unknown characters: "
                f"{self.rows_with_unknown} (of {self.rows})"
            )
        if self.rows_lowercase:
            text += f"; {self.rows_lowercase} rows have lower-case letters (upper-cased)"
        if self.kind != "protein" and self.rows_with_u:
            text += f"; {self.rows_with_u} rows hold U (read as T)"
        return text


def letter_report(values: Iterable[Any], kind: str) -> LetterReport:
    """Count the ambiguous and unknown letters of a column of ``kind`` (dna, rna or protein) sequences.

    Non-string values are skipped. Ambiguous letters are the IUPAC codes (nucleotides) or
    ``X B Z`` (proteins); unknown ones are any other character outside the alphabet.
    """
    if kind not in KINDS:
        raise ValueError(f"sequence kind must be one of {', '.join(KINDS)}, not {kind!r}")
    protein = kind == "protein"
    known = set(AMINO_ACIDS + "UO" if protein else BASES + "U")  # plain letters: neither ambiguous nor unknown
    ambiguous = set(PROTEIN_AMBIGUOUS if protein else IUPAC_AMBIGUOUS)
    report = LetterReport(kind)
    counts: Counter[str] = Counter()
    for value in values:
        if not isinstance(value, str):
            continue
        report.rows += 1
        raw = _WHITESPACE.sub("", value)
        report.rows_lowercase += raw != raw.upper()
        sequence = raw.upper()
        report.rows_with_u += (not protein) and "U" in sequence
        odd = Counter(ch for ch in sequence if ch not in known)
        if not odd:
            continue
        counts.update(odd)
        report.rows_with_ambiguous += any(ch in ambiguous for ch in odd)
        report.rows_with_unknown += any(ch not in ambiguous for ch in odd)
    report.letters = dict(counts.most_common())
    report.ambiguous = sorted(ch for ch in counts if ch in ambiguous)
    return report


@dataclass
class SequenceColumn:
    """A column recognised as biological sequences, and the tokenizer proposed for it."""

    column: str
    kind: str  # dna, rna or protein
    share: float  # share of the sample's characters in the alphabet (ambiguity codes included)
    tokenizer: str  # "kmer" or "nucleotide" (single letter) or "protein"
    k: int  # suggested k (1 for single-letter tokenizers)
    report: dict[str, Any]  # LetterReport.to_dict() of the rows scanned
    letters: str  # LetterReport.summary(): the report as one line

    def describe(self) -> str:
        """A sentence for the inspect output and the Datasets tab."""
        name = {"dna": "DNA", "rna": "RNA", "protein": "protein"}[self.kind]
        if self.kind == "protein":
            tok = "single amino-acid tokenizer"
        else:
            tok = f"overlapping {self.k}-mer tokenizer (or single nucleotides, k = 1)"
        return f"column {self.column!r} holds {name} sequences ({self.share:.0%} alphabet letters); proposed: {tok}"


def classify_values(values: Iterable[Any]) -> tuple[str, float] | None:
    """``(kind, share)`` when the strings look like DNA, RNA or protein sequences, else None.

    A sequence column has long strings without spaces, written in one case, whose characters are
    almost all alphabet letters (N and IUPAC codes count as nucleotide letters, so a few
    ambiguous bases do not hide DNA). Nucleotides win over protein (ACGT are amino acids too);
    RNA is nucleotides with more U than T. Upper-case English without spaces could pass for
    protein but for its O and U (about a tenth of its letters, and rare in proteins).
    """
    strings = [v.strip() for v in values if isinstance(v, str) and v.strip()]
    if not strings:
        return None
    # Sequences may wrap (FASTA line breaks) but never hold spaces between words.
    spaced = sum(1 for s in strings if " " in s)
    if spaced > (1 - MIN_ROWS_SHARE) * len(strings):
        return None
    # Sentences and words mix cases; a sequence is all upper or all lower case.
    one_case = sum(1 for s in strings if s == s.upper() or s == s.lower())
    if one_case < MIN_ROWS_SHARE * len(strings):
        return None
    joined = clean("".join(strings))
    if not joined or len(joined) / len(strings) < MIN_MEAN_LENGTH:
        return None
    letters = Counter(joined)
    total = len(joined)
    nucleotide = sum(letters[c] for c in BASES + "U" + IUPAC_AMBIGUOUS) / total
    plain = sum(letters[c] for c in BASES + "U") / total
    # Plain bases must dominate: English upper-case text is not mostly A, C, G and T.
    if nucleotide >= MIN_SHARE and plain >= 0.75:
        kind = "rna" if letters["U"] > letters["T"] else "dna"
        return kind, nucleotide
    # The 20 amino acids and X must make up the share on their own: the rare U and O (and the
    # ambiguity codes B, Z) are allowed but are about a tenth of English letters (O and U).
    common = sum(letters[c] for c in AMINO_ACIDS + "X") / total
    if common >= MIN_SHARE:
        return "protein", sum(letters[c] for c in PROTEIN_LETTERS) / total
    return None


def detect_sequence_column(columns: list[str], samples: list[dict], prefer: str | None = None) -> SequenceColumn | None:
    """The first column (``prefer`` first) of the sample whose values are biological sequences, or None."""
    order = ([prefer] if prefer in columns else []) + [c for c in columns if c != prefer]
    for column in order:
        values = [s.get(column) for s in samples]
        found = classify_values(values)
        if found is None:
            continue
        kind, share = found
        k = 1 if kind == "protein" else SUGGESTED_K
        tokenizer = "protein" if kind == "protein" else "kmer"
        report = letter_report(values, kind)
        return SequenceColumn(column, kind, round(share, 4), tokenizer, k, report.to_dict(), report.summary())
    return None
