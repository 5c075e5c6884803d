"""Windowed classification: every sequence counts once in the loss, however many windows it has."""

from __future__ import annotations

import pytest
import torch

from studio.sequences.tokenizers import build_tokenizer
from studio.training.data import collate
from studio.training.losses import loss_sum
from studio.training.tokenise import encode_rows, sequence_weights


class ConstantLogits(torch.nn.Module):
    """A 'classifier' whose logits are one trainable vector for every row (a class prior)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(2))

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.bias.expand(input_ids.shape[0], 2)})()


def windowed(rows):
    tokenizer = build_tokenizer("nucleotide", model_max_length=32)
    return encode_rows(rows, tokenizer, task="classification", max_length=32, labels=[0, 1]).examples


def test_weights_are_one_over_windows_and_average_one():
    assert sequence_weights([1, 3]) == pytest.approx([2.0, 2 / 3])  # 4 windows, 2 sequences: scale 2
    assert sequence_weights([5]) == [1.0]
    examples = windowed([{"text": "ACGT" * 200, "label": 0}, {"text": "ACGTAC", "label": 1}])
    per_sequence: dict[int, float] = {}
    for e in examples:
        per_sequence[e["sequence"]] = per_sequence.get(e["sequence"], 0.0) + e["weight"]
    assert sum(e["sequence"] == 0 for e in examples) >= 20  # the long one is split into many windows
    assert per_sequence[0] == pytest.approx(per_sequence[1])  # ... but weighs as much as the short one
    assert sum(e["weight"] for e in examples) == pytest.approx(len(examples))


def test_a_long_sequence_does_not_outweigh_a_short_one():
    """One long mRNA-like sequence (label 0, many windows) against one short one (label 1, one window).

    The loss-minimising class prior must be 50/50 (each sequence counts once); per-window training
    (no weights) would push it to the long sequence's class by its share of windows.
    """
    examples = windowed([{"text": "ACGT" * 300, "label": 0}, {"text": "TTGCA" * 4, "label": 1}])
    model = ConstantLogits()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    batch = collate(examples, pad_id=0)
    assert "weight" in batch
    for _ in range(300):
        optimizer.zero_grad()
        value, _ = loss_sum(model, batch, "classification")
        (value / len(examples)).backward()
        optimizer.step()
    p_long_class = torch.softmax(model.bias.detach(), -1)[0].item()
    assert p_long_class == pytest.approx(0.5, abs=0.02)

    unweighted = collate([{k: v for k, v in e.items() if k != "weight"} for e in examples], pad_id=0)
    assert "weight" not in unweighted
    model = ConstantLogits()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(300):
        optimizer.zero_grad()
        value, _ = loss_sum(model, unweighted, "classification")
        (value / len(examples)).backward()
        optimizer.step()
    share = sum(e["labels"] == 0 for e in examples) / len(examples)
    assert share > 0.9
    assert torch.softmax(model.bias.detach(), -1)[0].item() == pytest.approx(share, abs=0.03)


def test_plain_classification_rows_carry_no_weight():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[UNK]")
    rows = [{"text": "a b", "label": "x"}, {"text": "b", "label": "y"}]
    examples = encode_rows(rows, tokenizer, task="classification", max_length=8, labels=["x", "y"]).examples
    assert all("weight" not in e for e in examples)
    assert "weight" not in collate(examples, pad_id=0)
