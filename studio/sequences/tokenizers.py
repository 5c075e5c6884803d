"""Nucleotide, overlapping k-mer and amino-acid tokenizers, built with the HF ``tokenizers`` library.

Each is a :class:`~transformers.PreTrainedTokenizerFast` with the BERT special tokens
``[PAD] [UNK] [CLS] [SEP] [MASK]`` (ids 0–4), that ``save_pretrained`` writes and
``AutoTokenizer.from_pretrained`` reads back with the same ids. Encoding adds ``[CLS] … [SEP]``.

Letters (see :mod:`studio.sequences.alphabet`): the tokenizer's own normalizer upper-cases,
reads ``U`` as ``T`` and maps every IUPAC ambiguity code to ``N``; other characters become ``[UNK]``.

- ``nucleotide`` (k = 1): one token per base, vocabulary ``A C G T N``; reads a raw sequence.
- ``kmer`` (k = 3..6): overlapping k-mers, one token per position (a sequence of n bases gives
  n − k + 1 tokens), vocabulary the 4^k k-mers of ``ACGT``; a k-mer holding ``N`` is ``[UNK]``
  (DNABERT's rule). The ``tokenizers`` library has no overlapping pre-tokenizer that can be saved,
  so, as in DNABERT, the saved tokenizer reads k-mers *separated by spaces*: turn a sequence into
  that text with :func:`prepare` (or :func:`kmer_text`). :func:`encode_sequences` does it for any
  of these tokenizers, reading ``kmer`` from the tokenizer's saved config.
- ``codon``: non-overlapping 3-mers (codons) read in each of the three forward reading frames,
  vocabulary the 64 codons; a codon holding ``N`` is ``[UNK]``. A sequence becomes three token
  sequences, one a frame (:func:`reading_frame_texts`), so the frame a stop codon lies in is explicit:
  "no TAA/TAG/TGA token in this window" is a fact about the tokens, not about their positions modulo 3,
  which overlapping k-mers leave the encoder to work out. Why: coding potential (lncRNA against
  mRNA) is decided by the longest open reading frame, a property of one frame.
- ``protein``: one token per amino acid, the 20 plus ``X B Z U O``.

The saved ``tokenizer_config.json`` records ``sequence_kind``, ``kmer`` and ``reading_frames`` so
that a later job (pre-training, classification) knows how to prepare text for a tokenizer it only
loads.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from studio.sequences.alphabet import AMINO_ACIDS, BASES, IUPAC_AMBIGUOUS, PROTEIN_EXTRA, to_dna

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TOKENIZER_KINDS = ("nucleotide", "kmer", "codon", "protein")
CODON_FRAMES = 3  # the forward reading frames a codon tokenizer reads
K_RANGE = range(3, 7)


def _vocab(words: Sequence[str]) -> dict[str, int]:
    return {word: i for i, word in enumerate((*SPECIAL_TOKENS, *words))}


def _nucleotide_normalizer() -> Any:
    """Upper case, ``U`` → ``T``, every ambiguity code → ``N`` (whitespace left alone)."""
    from tokenizers import Regex, normalizers

    steps = [normalizers.Replace(letter.lower(), letter) for letter in BASES + "U" + IUPAC_AMBIGUOUS]
    steps.append(normalizers.Replace("U", "T"))
    steps.append(normalizers.Replace(Regex(f"[{IUPAC_AMBIGUOUS}]"), "N"))
    return normalizers.Sequence(steps)


def _protein_normalizer() -> Any:
    from tokenizers import Regex, normalizers

    letters = AMINO_ACIDS + PROTEIN_EXTRA
    steps = [normalizers.Replace(letter.lower(), letter) for letter in letters]
    return normalizers.Sequence([normalizers.Replace(Regex(r"\s+"), ""), *steps])


def build_tokenizer(kind: str = "nucleotide", k: int = 1, model_max_length: int = 512) -> Any:
    """A fresh :class:`PreTrainedTokenizerFast` of ``kind`` (nucleotide, kmer, codon or protein).

    ``k`` is used by ``kmer`` only (3 to 6); a codon is always 3 letters. ``model_max_length`` is what the tokenizer reports
    to truncation; the encoder that uses it sets the real limit.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "kmer" and k == 1:
        kind = "nucleotide"
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer kind must be one of {', '.join(TOKENIZER_KINDS)}, not {kind!r}")
    if kind == "kmer" and k not in K_RANGE:
        raise ValueError(f"k-mer tokenizers take k from {K_RANGE.start} to {K_RANGE.stop - 1}, not {k}")
    if kind == "nucleotide":
        words = [*BASES, "N"]
        normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\s+"), ""), _nucleotide_normalizer()])
        pre = pre_tokenizers.Split(Regex("."), behavior="isolated")
    elif kind in ("kmer", "codon"):
        k = 3 if kind == "codon" else k
        words = ["".join(p) for p in itertools.product(BASES, repeat=k)]
        normalizer = _nucleotide_normalizer()
        pre = pre_tokenizers.WhitespaceSplit()
    else:
        words = [*AMINO_ACIDS, *PROTEIN_EXTRA]
        normalizer = _protein_normalizer()
        pre = pre_tokenizers.Split(Regex("."), behavior="isolated")
    vocab = _vocab(words)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        # Saved in tokenizer_config.json: what a later job needs to prepare text for this tokenizer.
        sequence_kind="protein" if kind == "protein" else "nucleotide",
        kmer=k if kind in ("kmer", "codon") else 1,
        reading_frames=CODON_FRAMES if kind == "codon" else 1,
    )


def kmer_of(tokenizer: Any) -> int:
    """The k a (possibly reloaded) sequence tokenizer was built for: 1 for single-letter ones."""
    value = getattr(tokenizer, "init_kwargs", {}).get("kmer", 1)
    return int(value or 1)


def reading_frames_of(tokenizer: Any) -> int:
    """How many reading frames a (possibly reloaded) sequence tokenizer reads: 3 for codons, else 1."""
    value = getattr(tokenizer, "init_kwargs", {}).get("reading_frames", 1)
    return int(value or 1)


def kmers(sequence: str, k: int) -> list[str]:
    """The overlapping k-mers of ``sequence`` after :func:`~studio.sequences.alphabet.to_dna`.

    Ambiguity codes become ``N`` first, as the tokenizer's normalizer would. A sequence shorter
    than ``k`` gives no k-mer.
    """
    dna = to_dna(sequence).translate(_TO_N)
    return [dna[i : i + k] for i in range(len(dna) - k + 1)]


_TO_N = str.maketrans(dict.fromkeys(IUPAC_AMBIGUOUS, "N"))


def kmer_text(sequence: str, k: int) -> str:
    """The text a k-mer tokenizer reads: the overlapping k-mers separated by spaces."""
    return " ".join(kmers(sequence, k))


def codon_text(sequence: str, frame: int) -> str:
    """The codons of ``sequence`` read from offset ``frame`` (0, 1 or 2), separated by spaces.

    Letters after the last whole codon are left out (at most two: they belong to no codon of this frame).
    """
    dna = to_dna(sequence).translate(_TO_N)
    return " ".join(dna[i : i + 3] for i in range(frame, len(dna) - 2, 3))


def prepare(tokenizer: Any, sequence: str) -> str:
    """The text to give ``tokenizer`` for ``sequence``: spaced k-mers for a k-mer tokenizer, else unchanged.

    A codon tokenizer gets the first reading frame; :func:`reading_frame_texts` gives all of them.
    """
    if reading_frames_of(tokenizer) > 1:
        return codon_text(sequence, 0)
    k = kmer_of(tokenizer)
    return kmer_text(sequence, k) if k > 1 else sequence


def reading_frame_texts(tokenizer: Any, sequence: str) -> list[str]:
    """Every text ``tokenizer`` reads for ``sequence``: one a reading frame for codons, else one text."""
    frames = reading_frames_of(tokenizer)
    if frames > 1:
        return [codon_text(sequence, frame) for frame in range(frames)]
    return [prepare(tokenizer, sequence)]


def encode_sequences(tokenizer: Any, sequences: Sequence[str], **kwargs: Any) -> Any:
    """``tokenizer(...)`` on the prepared sequences (keyword arguments as for the tokenizer call)."""
    return tokenizer([prepare(tokenizer, s) for s in sequences], **kwargs)
