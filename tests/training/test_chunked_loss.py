"""The chunked loss over labelled tokens equals the full-logits loss, value and gradients."""

from __future__ import annotations

import pytest
import torch
from conftest_training import chat_rows

from studio.training.data import collate
from studio.training.losses import LossFunction, loss_sum
from studio.training.models import load_base_model, load_tokenizer_for
from studio.training.tokenise import encode_rows


@pytest.fixture
def batch(tiny_llama_dir):
    tokenizer = load_tokenizer_for(tiny_llama_dir)
    examples = encode_rows(chat_rows(6), tokenizer, task="causal-lm", max_length=64).examples
    return collate(examples, tokenizer.pad_token_id)


def lora_model(path, head_trainable: bool = False):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(
        r=4, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0, init_lora_weights=False
    )
    if head_trainable:
        config.modules_to_save = ["lm_head"]
    return get_peft_model(load_base_model(path, "causal-lm"), config)


def loss_and_grads(model, fn, batch):
    model.zero_grad(set_to_none=True)
    value, _ = fn(model, batch)
    value.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return value.detach(), grads


@pytest.mark.parametrize("head_trainable", [False, True], ids=["fused-frozen-head", "checkpointed-head"])
def test_chunked_loss_and_gradients_equal_the_naive_loss(tiny_llama_dir, batch, head_trainable):
    model = lora_model(tiny_llama_dir, head_trainable)
    chunked = LossFunction.for_model(model, "causal-lm", chunk_tokens=5)
    assert chunked.verify(model, batch) and chunked.chunked
    assert chunked.fused is not head_trainable
    assert int((batch["labels"][:, 1:] != -100).sum()) > 3 * 5  # several chunks

    naive_value, naive_grads = loss_and_grads(model, lambda m, b: loss_sum(m, b, "causal-lm"), batch)
    value, grads = loss_and_grads(model, chunked, batch)
    torch.testing.assert_close(value, naive_value, atol=1e-5, rtol=1e-5)
    assert set(grads) == set(naive_grads) and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, naive_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_chunked_loss_without_gradients_in_eval(tiny_llama_dir, batch):
    model = lora_model(tiny_llama_dir).eval()
    chunked = LossFunction.for_model(model, "causal-lm", chunk_tokens=7)
    with torch.no_grad():
        value, logits = chunked(model, batch)
        naive, _ = loss_sum(model, batch, "causal-lm")
    assert logits is None
    torch.testing.assert_close(value, naive, atol=1e-5, rtol=1e-5)


def test_chunked_loss_under_bf16_autocast_is_close(tiny_llama_dir, batch):
    model = lora_model(tiny_llama_dir)
    chunked = LossFunction.for_model(model, "causal-lm", 5, compute_dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value, _ = chunked(model, batch)
        naive, _ = loss_sum(model, batch, "causal-lm")
    value.backward()
    value = value.detach()
    assert torch.isfinite(value) and float(abs(value - naive)) <= 0.02 * float(naive)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_models_that_post_process_logits_fall_back_to_full_logits(tiny_llama_dir, batch):
    model = load_base_model(tiny_llama_dir, "causal-lm")
    original = model.forward

    def softcapped(*args, **kwargs):
        out = original(*args, **kwargs)
        out.logits = 0.5 * torch.tanh(out.logits / 0.5)
        return out

    model.forward = softcapped
    fn = LossFunction.for_model(model, "causal-lm", chunk_tokens=5)
    assert not fn.verify(model, batch) and not fn.chunked
    assert "full logits" in fn.describe()
    value, logits = fn(model, batch)
    assert logits is not None and torch.isfinite(value)


def test_opt_outs(tiny_llama_dir):
    model = load_base_model(tiny_llama_dir, "causal-lm")

    class NeedsLogits:
        name = "custom"
        needs_full_logits = True

    assert not LossFunction.for_model(model, "causal-lm", 0).chunked
    assert not LossFunction.for_model(model, "causal-lm", 64, variant=NeedsLogits()).chunked
    assert not LossFunction.for_model(model, "classification", 64).chunked
