"""Dataset kinds, which metrics fit them, and prompt/reference splitting."""

from __future__ import annotations

import pytest

from studio.errors import ValidationFailed
from studio.evaluation.examples import check_metrics, dataset_kind, generation_examples


def _chat(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def test_dataset_kind():
    assert dataset_kind([{"text": "a", "label": 1}]) == "classification"
    assert dataset_kind([{"text": "a"}], {"task": "classification"}) == "classification"
    assert dataset_kind([_chat(("user", "q"), ("assistant", "a"))]) == "chat"
    assert dataset_kind([{"text": "a"}]) == "text"


def test_check_metrics_names_the_metrics_that_fit():
    check_metrics(["loss", "exact_match", "rouge_l"], "chat", "1 (gsm8k)")
    with pytest.raises(ValidationFailed) as info:
        check_metrics(["loss", "accuracy"], "chat", "1 (gsm8k)")
    message = str(info.value)
    assert "accuracy needs a classification dataset" in message
    assert "fit: loss, exact_match, rouge_l" in message
    with pytest.raises(ValidationFailed, match="fit: loss, accuracy"):
        check_metrics(["rouge_l"], "classification", "2 (sst2)")
    with pytest.raises(ValidationFailed, match="fit: loss$"):
        check_metrics(["exact_match"], "text", "3 (notes)")


def test_generation_examples_split_at_the_last_assistant_turn():
    rows = [
        _chat(("system", "be brief"), ("user", "2+2?"), ("assistant", "4"), ("user", "and 3+3?"), ("assistant", "6")),
        _chat(("user", "no answer yet")),  # skipped: nothing to compare against
        {"text": "plain"},  # skipped
    ]
    [example] = generation_examples(rows)
    assert example.reference == "6"
    assert [m["role"] for m in example.prompt] == ["system", "user", "assistant", "user"]
    assert example.prompt[-1]["content"] == "and 3+3?"
