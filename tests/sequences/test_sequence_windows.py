"""Windows over long sequences: every position covered, the overlap as configured, pooling by hand."""

from __future__ import annotations

import random

import pytest
import torch

from studio.sequences.tokenizers import build_tokenizer
from studio.sequences.windows import encode_windows, pool_logits, window_spans


@pytest.mark.parametrize("n", [0, 1, 9, 10, 11, 25, 26, 100, 1001])
@pytest.mark.parametrize(("size", "overlap"), [(10, 0), (10, 3), (10, 9), (1, 0), (7, 2)])
def test_spans_cover_every_position_with_the_overlap(n, size, overlap):
    spans = window_spans(n, size, overlap)
    covered = [0] * n
    for start, end in spans:
        assert 0 <= start <= end <= n
        assert end - start == min(size, n)  # every window full length whenever the sequence is
        for i in range(start, end):
            covered[i] += 1
    assert all(c >= 1 for c in covered)  # every position read at least once
    assert spans[-1][1] == n
    for (s0, e0), (s1, _) in zip(spans[:-2], spans[1:-1], strict=True):
        assert e0 - s1 == overlap  # neighbours share exactly `overlap` tokens ...
        assert s1 - s0 == size - overlap
    if len(spans) >= 2:
        assert spans[-2][1] - spans[-1][0] >= overlap  # ... the end-aligned last window at least that


def test_spans_refuse_bad_settings():
    with pytest.raises(ValueError, match="overlap"):
        window_spans(10, 4, 4)
    with pytest.raises(ValueError, match="at least one token"):
        window_spans(10, 0, 0)


def test_nucleotide_windows_cover_every_base_once_without_overlap():
    tok = build_tokenizer("nucleotide")
    rng = random.Random(0)
    sequence = "".join(rng.choice("ACGT") for _ in range(50))
    windows = encode_windows(tok, sequence, max_length=12, overlap=0)
    assert all(w[0] == tok.cls_token_id and w[-1] == tok.sep_token_id and len(w) <= 12 for w in windows)
    bodies = [tok.convert_ids_to_tokens(w[1:-1]) for w in windows]
    # windows of 10 bases starting every 10: the first four tile 0..40, the last one is 40..50
    assert "".join("".join(b) for b in bodies) == sequence
    assert len(windows) == 5


def test_kmer_windows_cover_every_nucleotide():
    tok = build_tokenizer("kmer", k=3)
    rng = random.Random(1)
    sequence = "".join(rng.choice("ACGT") for _ in range(101))
    windows = encode_windows(tok, sequence, max_length=22, overlap=4)
    covered = [0] * len(sequence)
    position = 0
    seen = {}
    for w in windows:
        kmers = tok.convert_ids_to_tokens(w[1:-1])
        assert len(kmers) <= 20
        # find where this window starts in the sequence (k-mers are one per position)
        start = sequence.find("".join(k[0] for k in kmers) + kmers[-1][1:])
        assert start >= 0
        seen[start] = kmers
        for i in range(start, start + len(kmers) + 2):
            covered[i] += 1
        position = start
    assert position + len(seen[position]) + 2 == len(sequence)  # the last window reaches the end
    assert all(c >= 1 for c in covered)
    starts = sorted(seen)
    assert [b - a for a, b in zip(starts[:-2], starts[1:-1], strict=True)] == [16] * (len(starts) - 2)


def test_pooling_is_the_mean_of_each_sequences_window_logits():
    logits = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0], [-1.0, 1.0], [4.0, 4.0]])
    order, pooled = pool_logits(logits, [7, 7, 3, 7, 3])
    assert order == [7, 3]
    by_hand = torch.tensor([[(1 + 3 - 1) / 3, (0 + 2 + 1) / 3], [(0 + 4) / 2, (5 + 4) / 2]])
    assert torch.allclose(pooled, by_hand)
    assert pooled.argmax(-1).tolist() == [0, 1]
