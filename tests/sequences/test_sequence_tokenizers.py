"""Sequence tokenizers: special tokens, letters, overlapping k-mers, save/reload round trips."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from studio.sequences.alphabet import letter_report
from studio.sequences.tokenizers import build_tokenizer, encode_sequences, kmer_of, kmer_text, kmers, prepare


def tokens(tokenizer, sequence):
    ids = encode_sequences(tokenizer, [sequence])["input_ids"][0]
    return tokenizer.convert_ids_to_tokens(ids)


def test_special_tokens_have_the_bert_ids():
    tok = build_tokenizer("nucleotide")
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id] == [
        0,
        1,
        2,
        3,
        4,
    ]
    assert tok.convert_ids_to_tokens(list(range(5, len(tok)))) == ["A", "C", "G", "T", "N"]


def test_nucleotide_letters_case_rna_iupac_and_unknown():
    tok = build_tokenizer("nucleotide")
    # lower case is upper-cased, U reads as T, every ambiguity code is N, other characters are [UNK],
    # whitespace (FASTA line breaks) is dropped.
    assert tokens(tok, "acgU\nNRY-T*") == ["[CLS]", "A", "C", "G", "T", "N", "N", "N", "[UNK]", "T", "[UNK]", "[SEP]"]


def test_kmers_overlap_one_per_position():
    assert kmers("ACGTAC", 3) == ["ACG", "CGT", "GTA", "TAC"]
    assert kmers("acgu", 4) == ["ACGT"]
    assert kmers("ACG", 4) == []
    assert kmer_text("ACGTA", 3) == "ACG CGT GTA"
    for k in range(3, 7):
        sequence = "ACGTTGCAAGGCT"
        tok = build_tokenizer("kmer", k)
        assert len(tok) == 5 + 4**k
        got = tokens(tok, sequence)[1:-1]
        assert got == [sequence[i : i + k] for i in range(len(sequence) - k + 1)]
        assert kmer_of(tok) == k


def test_kmer_with_ambiguity_code_is_unknown():
    tok = build_tokenizer("kmer", 3)
    # R sits in positions 2..4 of ACRTAC: exactly the three k-mers covering it are [UNK].
    assert tokens(tok, "ACRTACG") == ["[CLS]", "[UNK]", "[UNK]", "[UNK]", "TAC", "ACG", "[SEP]"]


def test_protein_alphabet():
    tok = build_tokenizer("protein")
    assert len(tok) == 5 + 25
    assert tokens(tok, "mkX bzUO*J") == ["[CLS]", "M", "K", "X", "B", "Z", "U", "O", "[UNK]", "[UNK]", "[SEP]"]


@pytest.mark.parametrize(("kind", "k"), [("nucleotide", 1), ("kmer", 3), ("kmer", 6), ("protein", 1)])
def test_save_and_reload_give_the_same_ids(tmp_path, kind, k):
    tok = build_tokenizer(kind, k)
    batch = ["ACGTNNACGTRYacgu", "GATTACAGATTACA", "MKVLAAGX"]
    before = encode_sequences(tok, batch, padding=True)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    after = encode_sequences(loaded, batch, padding=True)
    assert after["input_ids"] == before["input_ids"]
    assert after["attention_mask"] == before["attention_mask"]
    assert loaded.mask_token == "[MASK]" and loaded.pad_token_id == 0
    assert kmer_of(loaded) == k
    assert loaded.init_kwargs["sequence_kind"] == ("protein" if kind == "protein" else "nucleotide")
    assert prepare(loaded, "ACGTA") == ("ACGTA" if k == 1 else kmer_text("ACGTA", k))


def test_bad_kinds_are_refused():
    with pytest.raises(ValueError, match="k-mer tokenizers take k from 3 to 6"):
        build_tokenizer("kmer", 7)
    with pytest.raises(ValueError, match="tokenizer kind"):
        build_tokenizer("bpe")


def test_letter_report_counts_each_letter_and_rows():
    rows = ["ACGTN", "acgtNNR", "ACGU", "AC-GT", "ACGT", None, 7]
    report = letter_report(rows, "dna")
    assert report.rows == 5
    assert report.letters == {"N": 3, "R": 1, "-": 1}
    assert report.ambiguous == ["N", "R"]
    assert report.rows_with_ambiguous == 2
    assert report.rows_with_unknown == 1
    assert report.rows_lowercase == 1
    assert report.rows_with_u == 1
    summary = report.summary()
    assert "'N' ×3 (ambiguous)" in summary and "'-' ×1 (unknown)" in summary


def test_letter_report_for_proteins():
    report = letter_report(["MKVX", "MKB*", "MKV"], "protein")
    assert report.letters == {"X": 1, "B": 1, "*": 1}
    assert report.ambiguous == ["B", "X"]
    assert (report.rows_with_ambiguous, report.rows_with_unknown) == (2, 1)
