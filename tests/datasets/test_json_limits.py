"""json_limits: deep values, over-long integers and lone surrogates are refused with their place."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from studio.datasets import json_limits
from studio.datasets.json_limits import MAX_INT_DIGITS, MAX_NESTING, JsonRefused, format_path


def nested(depth: int, key: str = "text") -> str:
    """An object whose ``key`` holds ``depth - 1`` nested arrays (``depth`` levels in all)."""
    return f'{{"{key}": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def refusal(text: str) -> JsonRefused:
    with pytest.raises(JsonRefused) as caught:
        json_limits.loads(text)
    return caught.value


def test_depth_up_to_the_limit_is_accepted_one_more_is_refused():
    assert json_limits.loads(nested(MAX_NESTING))["text"]
    refused = refusal(nested(MAX_NESTING + 1))
    assert (refused.reason, format_path(refused.field)) == ("too_deep", "text")
    assert refused.detail == f"is nested deeper than {MAX_NESTING} levels"


def test_depth_beyond_the_parsers_recursion_is_refused_not_a_recursion_error():
    refused = refusal(nested(10_000, key="messages"))
    assert (refused.reason, format_path(refused.field)) == ("too_deep", "messages")
    # unterminated, so the parser gives up on depth before it finds the syntax error
    assert refusal("[" * 10_000).reason == "too_deep"


def test_brackets_inside_strings_do_not_count_as_nesting():
    text = json.dumps({"text": "[" * 5000 + "{" * 5000})
    assert json_limits.loads(text) == json.loads(text)


def test_an_over_long_integer_is_refused_with_its_place():
    refused = refusal('{"text": "a", "meta": [1, {"n": -' + "7" * 5000 + "}]}")
    assert (refused.reason, format_path(refused.path)) == ("number_too_long", "meta[1].n")
    assert refused.detail == f"is an integer with 5,000 digits; the limit is {MAX_INT_DIGITS:,}"
    assert json_limits.loads('{"n": ' + "7" * MAX_INT_DIGITS + "}")["n"] > 0  # at the limit: fine


def test_lone_surrogates_in_values_and_keys_are_refused_pairs_are_fine():
    refused = refusal('{"messages": [{"role": "user", "content": "hi \\ud800 there"}]}')
    assert (refused.reason, format_path(refused.path)) == ("invalid_unicode", "messages[0].content")
    assert "lone surrogate \\ud800" in refused.detail
    refused = refusal('{"text": "ok", "bad\\udfffkey": 1}')
    assert format_path(refused.path) == "bad\\udfffkey"  # printable: the surrogate is escaped
    assert "in its name" in refused.detail
    assert json_limits.loads('{"text": "\\ud83d\\ude00"}') == {"text": "\U0001f600"}


def test_syntax_errors_stay_json_decode_errors():
    with pytest.raises(json.JSONDecodeError):
        json_limits.loads('{"text": ')


def test_format_path():
    assert format_path([]) == "(row)"
    assert format_path(["messages", 2, "content"]) == "messages[2].content"
    assert format_path([0, "text"]) == "[0].text"
    assert format_path(["a", 0, 0, 0, 0, 0]) == "a[0][0][0]…"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_ordinary_json_parses_exactly_as_the_json_module_does(value):
    text = json.dumps(value)
    assert json_limits.loads(text) == json.loads(text)
