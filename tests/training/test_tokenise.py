"""Chat-template tokenisation: assistant-only labels, full-text labels, truncation, fallback template."""

from __future__ import annotations

import pytest
from conftest_training import make_tokenizer

from studio.training.tokenise import FALLBACK_CHAT_TEMPLATE, IGNORE_INDEX, encode_chat, encode_rows, label_index


def labelled_tokens(tokenizer, ids, labels):
    return [tokenizer.convert_ids_to_tokens(t) for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]


def conversation():
    return [
        {"role": "system", "content": "answer please"},
        {"role": "user", "content": "what color is the sky"},
        {"role": "assistant", "content": "the sky is blue"},
        {"role": "user", "content": "and the grass"},
        {"role": "assistant", "content": "green"},
    ]


def test_only_assistant_turns_and_their_end_marker_are_labelled(tiny_tokenizer):
    ids, labels = encode_chat(tiny_tokenizer, conversation(), "response")
    assert len(ids) == len(labels)
    assert labelled_tokens(tiny_tokenizer, ids, labels) == ["the", "sky", "is", "blue", "<|end|>", "green", "<|end|>"]
    # Labels are the token ids themselves where set (the loop shifts them).
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(ids, labels, strict=True))


def test_full_text_option_labels_every_token(tiny_tokenizer):
    ids, labels = encode_chat(tiny_tokenizer, conversation(), "full")
    assert labels == ids


def test_plain_text_rows_learn_every_token_and_end_with_eos(tiny_tokenizer):
    encoded = encode_rows([{"text": "hello the sky"}], tiny_tokenizer, task="causal-lm", max_length=32)
    example = encoded.examples[0]
    assert example["labels"] == example["input_ids"]
    assert example["input_ids"][-1] == tiny_tokenizer.eos_token_id


def test_truncation_is_counted_and_rows_without_response_are_dropped(tiny_tokenizer):
    long_answer = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "one " * 30}]}
    long_question = {"messages": [{"role": "user", "content": "two " * 30}, {"role": "assistant", "content": "yes"}]}
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    logs = []
    out = encode_rows(
        [long_answer, long_question, short], tiny_tokenizer, task="causal-lm", max_length=16, log=logs.append
    )
    assert out.truncated == 2  # both long rows were cut at 16 tokens
    assert out.dropped == 1 and out.dropped_indices == [1]  # the question ate the answer
    assert len(out.examples) == 2 and all(len(e["input_ids"]) <= 16 for e in out.examples)
    assert any("2 of 3 rows" in line and "truncated" in line for line in logs)


def test_tokenizer_without_chat_template_gets_the_fallback(tmp_path):
    tokenizer = make_tokenizer(chat_template=None)
    logs = []
    out = encode_rows(
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}],
        tokenizer,
        task="causal-lm",
        max_length=64,
        log=logs.append,
    )
    assert tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    assert any("fallback" in line for line in logs)
    example = out.examples[0]
    assert labelled_tokens(tokenizer, example["input_ids"], example["labels"]) == ["hello", "</s>"]


def test_classification_rows_map_labels_to_indices(tiny_tokenizer):
    rows = [{"text": "good movie", "label": "positive"}, {"text": "bad movie", "label": "negative"}]
    out = encode_rows(rows, tiny_tokenizer, task="classification", max_length=8, labels=["negative", "positive"])
    assert [e["labels"] for e in out.examples] == [1, 0]
    assert label_index([0, 1])(1) == 1 and label_index([0, 1])("0") == 0
    with pytest.raises(ValueError, match="not one of"):
        label_index(["a", "b"])("c")


def test_text_the_tokenizer_cannot_read_is_refused_or_warned_about(tiny_tokenizer):
    from studio.errors import ValidationFailed

    unreadable = [{"text": "ATGGCTTACGATTACA" * 8, "label": i % 2} for i in range(6)]  # one long unknown word
    with pytest.raises(ValidationFailed, match=r"cannot read this data: 6 of 6 rows .*unknown token.*smollm2"):
        encode_rows(unreadable, tiny_tokenizer, task="classification", max_length=16, labels=[0, 1])

    logs: list[str] = []
    mostly_fine = [{"text": "good movie", "label": 1}] * 8 + unreadable[:2]
    out = encode_rows(mostly_fine, tiny_tokenizer, task="classification", max_length=16, labels=[0, 1], log=logs.append)
    assert (out.unknown_rows, out.unknown_tokens, out.text_tokens) == (2, 2, 18)
    assert any(line.startswith("warning: 11% of the text tokens are unknown") for line in logs), logs

    clean = encode_rows(
        [{"text": "good movie", "label": 1}] * 4, tiny_tokenizer, task="classification", max_length=16, labels=[0, 1]
    )
    assert clean.unknown_tokens == 0 and clean.unknown_share == 0.0
