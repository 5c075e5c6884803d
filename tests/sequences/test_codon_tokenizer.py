"""Codon tokenizer: non-overlapping 3-mers in each of the three reading frames, windows per frame,
masked-LM without span masking, and a pre-training job that uses it."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoTokenizer

from studio.schema import PretrainRequest
from studio.sequences.pretrain import SequenceSource, tokenizer_choice
from studio.sequences.tokenizers import (
    build_tokenizer,
    codon_text,
    prepare,
    reading_frame_texts,
    reading_frames_of,
)
from studio.sequences.windows import encode_windows


def test_codon_text_reads_each_frame_and_drops_the_partial_codon():
    assert codon_text("ATGAAATAGC", 0) == "ATG AAA TAG"
    assert codon_text("ATGAAATAGC", 1) == "TGA AAT AGC"
    assert codon_text("ATGAAATAGC", 2) == "GAA ATA"
    assert codon_text("augRc", 0) == "ATG"  # RNA and lower case read as DNA; R becomes N
    assert codon_text("AC", 0) == ""


def test_codon_vocabulary_unknowns_and_round_trip(tmp_path):
    tok = build_tokenizer("codon")
    assert len(tok) == 5 + 64
    assert reading_frames_of(tok) == 3
    assert reading_frame_texts(tok, "ATGCCGTAA") == ["ATG CCG TAA", "TGC CGT", "GCC GTA"]
    assert prepare(tok, "ATGCCGTAA") == "ATG CCG TAA"
    ids = tok("ATG CNG TGA", add_special_tokens=True)["input_ids"]
    # a codon holding an ambiguity code is [UNK]; stop codons are ordinary tokens of their own
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "ATG", "[UNK]", "TGA", "[SEP]"]
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reading_frames_of(loaded) == 3
    sequence = "ATGAAACCCGGGTTTTAGAC"
    assert reading_frame_texts(loaded, sequence) == reading_frame_texts(tok, sequence)
    assert (
        loaded(reading_frame_texts(loaded, sequence))["input_ids"]
        == tok(reading_frame_texts(tok, sequence))["input_ids"]
    )
    # every other tokenizer reads one text
    assert reading_frames_of(build_tokenizer("kmer", 3)) == 1
    assert reading_frame_texts(build_tokenizer("nucleotide"), "ACGT") == ["ACGT"]


def test_codon_windows_cover_every_codon_of_every_frame():
    tok = build_tokenizer("codon")
    rng = random.Random(3)
    sequence = "".join(rng.choice("ACGT") for _ in range(200))
    windows = encode_windows(tok, sequence, max_length=12, overlap=2)  # 10 codons a window, 2 shared
    assert all(w[0] == tok.cls_token_id and w[-1] == tok.sep_token_id and len(w) <= 12 for w in windows)
    texts = reading_frame_texts(tok, sequence)
    expected = [t.split() for t in texts]  # frames 0, 1, 2: 66, 66, 66 codons
    assert [len(e) for e in expected] == [66, 66, 66]
    # windows come frame by frame; each frame's windows tile its codons in order (overlaps skipped)
    got, frame_windows = [], []
    for w in windows:
        body = tok.convert_ids_to_tokens(w[1:-1])
        frame_windows.append(body)
    per_frame = len(frame_windows) // 3
    assert len(frame_windows) == 3 * per_frame
    for frame in range(3):
        bodies = frame_windows[frame * per_frame : (frame + 1) * per_frame]
        joined = bodies[0][:]
        for body in bodies[1:]:
            # find how much this window shares with what came before (2, or more for the end-aligned last)
            shared = next(s for s in range(len(body), -1, -1) if joined[len(joined) - s :] == body[:s])
            joined += body[shared:]
        got.append(joined)
    assert got == expected


def test_codon_masking_is_per_token_and_the_choice_is_recorded():
    source = SequenceSource(field="sequence", column="sequence", kind="dna", tokenizer="kmer", k=3)
    request = PretrainRequest(dataset_id=1, tokenizer="codon")
    assert tokenizer_choice(request, source) == ("codon", 1)  # codons share no letters: no span masking
    protein = SequenceSource(field="s", column="s", kind="protein", tokenizer="protein", k=1)
    from studio.errors import ValidationFailed

    with pytest.raises(ValidationFailed, match="a codon tokenizer cannot read protein sequences; pick protein"):
        tokenizer_choice(PretrainRequest(dataset_id=1, tokenizer="codon"), protein)
    with pytest.raises(ValidationFailed, match="pick nucleotide, kmer or codon"):
        tokenizer_choice(PretrainRequest(dataset_id=1, tokenizer="protein"), source)
    with pytest.raises(ValueError, match="only k-mer tokenizers take a k"):
        PretrainRequest(dataset_id=1, tokenizer="codon", k=3)


@pytest.mark.slow
def test_pretrain_job_with_codons_learns_and_saves_the_frames(tmp_path):
    """A tiny encoder pre-trained on codons: the MLM loss falls and the saved tokenizer reads 3 frames."""
    from models_db.registry import Registry
    from studio.device import detect_device
    from studio.jobs.context import JobContext
    from studio.jobs.handlers import get_handler
    from studio.progress import MemoryReporter
    from studio.services.datasets import DatasetService
    from studio.settings import Settings
    from tests.sequences.test_pretrain_job import lncrna_subset, tiny_pretrain

    settings = Settings(data_dir=tmp_path / "data")
    settings.ensure_dirs()
    registry = Registry.from_url(f"sqlite:///{tmp_path}/r.db")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset = DatasetService(registry, settings).add(
            lncrna_subset(tmp_path, 30), mapping={"text": "sequence", "label": "label"}
        )
        request = tiny_pretrain(dataset.id, tokenizer="codon", name="codon-encoder", max_steps=40, learning_rate=5e-3)
        job = registry.create_job(kind=request.kind, request=request.model_dump(mode="json"), schema_version=1)
        ctx = JobContext(job_id=job.id, settings=settings, registry=registry, device=detect_device("cpu"), attempt=1)
        reporter = MemoryReporter()
        result = get_handler("pretrain")(request, reporter, ctx)
    finally:
        torch.set_num_threads(threads)
        registry.dispose()
    assert result["tokenizer"] == {"kind": "codon", "k": 1}
    assert any("codons in each of the 3 reading frames" in m for _, m in reporter.logs)
    # held-out windows under fixed masks: the codon LM beats its start (uniform over 64 codons ~ 4.16 nats)
    assert result["eval_loss"] < result["first_eval_loss"] - 0.1
    saved = AutoTokenizer.from_pretrained(result["base_model_path"])
    assert reading_frames_of(saved) == 3


def test_a_chosen_overlap_is_honoured_and_only_the_default_is_halved():
    """window_overlap 96 of a 130-token window means a stride of 32, not a silent cut to 64."""
    tok = build_tokenizer("nucleotide")
    sequence = "ACGT" * 100  # 400 tokens
    # explicit: body 128, overlap 96, stride 32 -> windows start at 0, 32, ..., 256 (9) + one end-aligned at 272
    assert len(encode_windows(tok, sequence, max_length=130, overlap=96)) == 10
    # saved with the tokenizer (as the pre-training job does): the same
    tok.init_kwargs["window_overlap"] = 96
    assert len(encode_windows(tok, sequence, max_length=130)) == 10
    # nothing chosen: the default 64 is cut to half of a 40-token body (stride 20, not 40 - 64 < 0)
    plain = build_tokenizer("nucleotide")
    assert "window_overlap" not in plain.init_kwargs
    assert len(encode_windows(plain, sequence, max_length=42)) == len(range(0, 400 - 40, 20)) + 1
