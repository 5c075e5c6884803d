"""Task vectors c_t: mean last-layer hidden state at each example's last real token."""

from __future__ import annotations

import pytest
import torch

from studio.adapter_generation.task_vector import task_vector
from studio.errors import ValidationFailed


@pytest.fixture(scope="module")
def base(tiny_llama_dir):
    from studio.training.models import load_base_model, load_tokenizer_for

    return load_base_model(tiny_llama_dir, "causal-lm"), load_tokenizer_for(tiny_llama_dir)


def test_vector_is_the_last_real_tokens_hidden_state(base, task_rows):
    from studio.training.tokenise import encode_chat

    model, tokenizer = base
    row = task_rows["colours"][0]
    ids, _ = encode_chat(tokenizer, row["messages"], "full")
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
    got = task_vector(model, tokenizer, [row])
    assert got.shape == (model.config.hidden_size,)
    assert torch.allclose(got, expected, atol=1e-5)


def test_padding_does_not_move_the_last_position(base, task_rows):
    model, tokenizer = base
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    long = task_rows["colours"][1]
    together = task_vector(model, tokenizer, [short, long], batch_size=2)
    apart = (task_vector(model, tokenizer, [short]) + task_vector(model, tokenizer, [long])) / 2
    assert torch.allclose(together, apart, atol=1e-5)


def test_only_the_first_examples_count_and_tasks_differ(base, task_rows):
    model, tokenizer = base
    colours = task_rows["colours"]
    assert torch.allclose(
        task_vector(model, tokenizer, colours, max_examples=4), task_vector(model, tokenizer, colours[:4])
    )
    numbers = task_vector(model, tokenizer, task_rows["numbers"])
    assert not torch.allclose(task_vector(model, tokenizer, colours), numbers, atol=1e-3)
    model.train()  # the caller's mode is restored
    try:
        task_vector(model, tokenizer, colours[:2])
        assert model.training
    finally:
        model.eval()


def test_no_examples_is_refused(base):
    model, tokenizer = base
    with pytest.raises(ValidationFailed, match="at least one example"):
        task_vector(model, tokenizer, [])
