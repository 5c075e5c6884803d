"""Format detection, proposals for unnamed columns, and user mappings in either order."""

from __future__ import annotations

import pytest

from studio.datasets.formats import detect_format, refusal_message
from studio.datasets.mapping import orient_mapping, parse_map_options, resolve_mapping
from studio.errors import ValidationFailed


def detect(rows):
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return detect_format(columns, rows)


@pytest.mark.parametrize(
    ("row", "fmt", "mapping", "confidence"),
    [
        (
            {"instruction": "i", "input": "x", "output": "o"},
            "alpaca",
            {"instruction": "instruction", "input": "input", "output": "output"},
            1.0,
        ),
        ({"instruction": "i", "output": "o"}, "alpaca", {"instruction": "instruction", "output": "output"}, 1.0),
        ({"id": 1, "messages": [{"role": "user", "content": "hi"}]}, "chat", {"messages": "messages"}, 1.0),
        ({"conversations": [{"from": "human", "value": "hi"}]}, "sharegpt", {"conversations": "conversations"}, 1.0),
        ({"prompt": "p", "completion": "c"}, "prompt_completion", {"prompt": "prompt", "completion": "completion"}, 1),
        ({"text": "some text", "meta": "m"}, "text", {"text": "text"}, 1.0),
        ({"text": "good film", "label": 1}, "classification", {"text": "text", "label": "label"}, 1.0),
        ({"sentence": "good film", "label": "pos"}, "classification", {"text": "sentence", "label": "label"}, 0.95),
    ],
)
def test_columns_that_name_a_format(row, fmt, mapping, confidence):
    detection = detect([row])
    assert detection.format == fmt
    assert detection.mapping == mapping
    assert detection.confidence == confidence
    assert detection.needs_confirmation is False


def test_chat_detection_reports_ignored_columns():
    detection = detect([{"id": "a", "message_tree_id": "t", "messages": []}])
    assert detection.ignored_columns == ["id", "message_tree_id"]
    assert detection.task == "causal-lm"


def test_gsm8k_like_question_answer_is_a_proposal():
    detection = detect([{"question": "What is 2+2?", "answer": "2+2=4\n#### 4"}] * 3)
    assert detection.format == "prompt_completion"
    assert detection.mapping == {"prompt": "question", "completion": "answer"}
    assert detection.confidence == 0.9
    assert detection.needs_confirmation is True
    message = refusal_message(["question", "answer"], detection)
    assert message.startswith(
        "columns question, answer do not name a format; re-run with --map prompt=question --map completion=answer"
    )
    assert "(proposed: prompt_completion, confidence 0.90)" in message


def test_lncrna_like_sequence_label_is_a_classification_proposal():
    rows = [
        {
            "id": f"AT{i}",
            "header": f"AT{i} cdna chromosome",
            "sequence": "ACGT" * (50 + i),
            "label": i % 2,
            "label_name": ["mRNA", "lncRNA"][i % 2],
        }  # fmt: skip
        for i in range(10)
    ]
    detection = detect(rows)
    assert detection.format == "classification"
    assert detection.mapping == {"text": "sequence", "label": "label"}
    assert detection.confidence == 0.7
    assert detection.needs_confirmation is True
    assert detection.ignored_columns == ["id", "header", "label_name"]


def test_e2e_like_mr_ref_is_a_weaker_proposal():
    detection = detect([{"mr": "name[The Vaults], eatType[pub]", "ref": "The Vaults is a pub."}] * 2)
    assert (detection.format, detection.mapping) == ("prompt_completion", {"prompt": "mr", "completion": "ref"})
    assert detection.confidence == 0.6
    assert detection.needs_confirmation


def test_other_proposals():
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert detect([{"dialog": turns}]).mapping == {"messages": "dialog"}
    sharegpt_as_messages = detect([{"messages": [{"from": "human", "value": "hi"}]}])
    assert (sharegpt_as_messages.format, sharegpt_as_messages.mapping) == ("sharegpt", {"conversations": "messages"})
    assert sharegpt_as_messages.needs_confirmation
    dolly = detect([{"instruction": "i", "context": "c", "response": "r", "category": "qa"}])
    assert dolly.format == "alpaca"
    assert dolly.mapping == {"instruction": "instruction", "input": "context", "output": "response"}
    review = detect([{"review": "great", "sentiment": "pos"}, {"review": "bad", "sentiment": "neg"}] * 3)
    assert (review.format, review.mapping) == ("classification", {"text": "review", "label": "sentiment"})
    single = detect([{"body": "just some text"}])
    assert (single.format, single.mapping, single.confidence) == ("text", {"text": "body"}, 0.5)


def test_no_text_columns_means_no_proposal():
    detection = detect([{"a": 1, "b": 2.5}])
    assert detection.format is None
    assert detection.needs_confirmation
    assert "do not name a format and no mapping could be proposed" in refusal_message(["a", "b"], detection)


def test_parse_map_options():
    assert parse_map_options(["prompt=question", " completion = answer "]) == {
        "prompt": "question",
        "completion": "answer",
    }
    with pytest.raises(ValidationFailed, match="must look like field=column"):
        parse_map_options(["prompt"])
    with pytest.raises(ValidationFailed, match="given twice"):
        parse_map_options(["prompt=a", "prompt=b"])


def test_mapping_is_accepted_in_either_order():
    columns = ["question", "answer"]
    expected = {"prompt": "question", "completion": "answer"}
    assert orient_mapping({"prompt": "question", "completion": "answer"}, columns) == expected
    assert orient_mapping({"question": "prompt", "answer": "completion"}, columns) == expected
    # both sides are field names: the side that is a column of the file is the column
    assert orient_mapping({"input": "prompt"}, ["input", "output"]) == {"prompt": "input"}
    assert orient_mapping({"prompt": "input"}, ["input", "output"]) == {"prompt": "input"}


def test_mapping_errors():
    with pytest.raises(ValidationFailed, match="neither side is a field name"):
        orient_mapping({"foo": "bar"}, ["foo"])
    with pytest.raises(ValidationFailed, match="the file has no column 'qq'; columns are question, answer"):
        orient_mapping({"prompt": "qq"}, ["question", "answer"])
    with pytest.raises(ValidationFailed, match="prompt_completion also needs completion"):
        resolve_mapping(["question", "answer"], {"prompt": "question"})
    with pytest.raises(ValidationFailed, match="do not belong to one format"):
        resolve_mapping(["a", "b"], {"prompt": "a", "label": "b"})
    with pytest.raises(ValidationFailed, match="mapped to more than one field"):
        resolve_mapping(["a"], {"prompt": "a", "completion": "a"})


def test_resolve_mapping_completes_with_same_named_columns():
    detection = resolve_mapping(["id", "sequence", "label"], {"text": "sequence"})
    assert detection.format == "classification"  # the label column makes it classification, not text
    assert detection.mapping == {"text": "sequence", "label": "label"}
    assert detection.needs_confirmation is False
    assert detection.ignored_columns == ["id"]
    alpaca = resolve_mapping(["q", "input", "a"], {"instruction": "q", "output": "a"})
    assert alpaca.mapping == {"instruction": "q", "input": "input", "output": "a"}
    # explicit fields decide the format even when another format's column exists
    pc = resolve_mapping(["messages", "q", "a"], {"q": "prompt", "a": "completion"})
    assert (pc.format, pc.mapping) == ("prompt_completion", {"prompt": "q", "completion": "a"})
