"""Flatten / unflatten of PEFT LoRA checkpoints (spec §6: the round trip is exact)."""

from __future__ import annotations

import pytest
import torch

from studio.adapter_generation.flatten import (
    Layout,
    check_same_layout,
    flatten,
    flatten_adapter,
    load_lora_state,
    save_theta_as_adapter,
    unflatten,
)
from studio.errors import ValidationFailed


def test_round_trip_is_bit_exact(task_checkpoints):
    centre, _ = task_checkpoints["colours"]
    state = load_lora_state(centre)
    theta, layout = flatten(state)
    back = unflatten(theta, layout)
    assert list(back) == sorted(state)
    for key, tensor in state.items():
        assert back[key].dtype == tensor.dtype and back[key].shape == tensor.shape
        assert torch.equal(back[key], tensor), key


def test_round_trip_keeps_bf16_and_constant_tensors_exact():
    rng = torch.Generator().manual_seed(0)
    state = {
        "b.lora_A.weight": (torch.randn(4, 8, generator=rng) * 3 + 1).to(torch.bfloat16),
        "a.lora_B.weight": torch.zeros(8, 4),  # a B at its zero init: std 0
        "c.lora_B.weight": torch.full((2, 2), 0.25),
    }
    theta, layout = flatten(state)
    assert [t.key for t in layout.tensors] == sorted(state)  # fixed key order
    back = unflatten(theta, layout)
    for key, tensor in state.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key


def test_each_tensor_is_z_scored_with_its_own_stats(task_checkpoints):
    theta, layout = flatten_adapter(task_checkpoints["numbers"][1][0])
    assert theta.dtype == torch.float64 and theta.numel() == layout.size
    offset = 0
    for t in layout.tensors:
        piece = theta[offset : offset + t.numel]
        offset += t.numel
        assert abs(float(piece.mean())) < 1e-9
        assert abs(float(piece.std(unbiased=False)) - 1.0) < 1e-9
        assert t.numel == int(torch.Size(t.shape).numel()) and t.std > 0


def test_layout_survives_json_and_other_checkpoints_stats_denormalise(task_checkpoints):
    first, second = task_checkpoints["colours"][1][:2]
    theta, layout = flatten_adapter(first)
    again = Layout.from_dict(layout.to_dict())
    assert again == layout
    # θ of one checkpoint with another checkpoint's stats: the same keys and shapes, other scales.
    _, other = flatten_adapter(second)
    state = unflatten(theta, other)
    original = load_lora_state(first)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in original.items()}
    assert not all(torch.equal(state[k], original[k]) for k in state)


def test_saved_theta_is_a_peft_adapter_with_the_same_outputs(tiny_llama_dir, task_checkpoints, tmp_path):
    from peft import PeftModel

    from studio.training.models import load_base_model

    checkpoint = task_checkpoints["colours"][1][3]
    theta, _ = flatten_adapter(checkpoint)
    out = save_theta_as_adapter(theta, checkpoint, tmp_path / "copy")
    ids = torch.tensor([[2, 10, 11, 12, 13]])
    logits = []
    for folder in (checkpoint, out):
        model = PeftModel.from_pretrained(load_base_model(tiny_llama_dir, "causal-lm"), str(folder)).eval()
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits)
    assert torch.equal(logits[0], logits[1])


def test_checkpoints_of_another_shape_are_refused(tiny_llama_dir, task_checkpoints, tmp_path):
    from icm_lab import random_lora

    other = random_lora(tiny_llama_dir, tmp_path / "r8", seed=3, r=4)
    layouts = [flatten_adapter(task_checkpoints["colours"][0])[1], flatten_adapter(other)[1]]
    with pytest.raises(ValidationFailed, match="same LoRA tensors"):
        check_same_layout(layouts, ["a", "b"])
