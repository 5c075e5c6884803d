"""Fixtures for the serving engine tests: a tiny random Llama and LoRA adapters of mixed ranks saved by PEFT."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest_training import make_llama_dir

# (name, LoraConfig keyword arguments): three ranks, one rsLoRA, one with rank_pattern/alpha_pattern.
ADAPTERS = {
    "r2": dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
    "r4_rslora": dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    "r8_patterns": dict(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "gate_proj", "up_proj", "down_proj"],
        rank_pattern={"layers.0.self_attn.q_proj": 3, "down_proj": 6},
        alpha_pattern={"up_proj": 5, "layers.1.self_attn.q_proj": 2},
    ),
}


def load_base(path: Path):
    """The tiny base model in fp32, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval()


def save_adapter(base_dir: Path, out: Path, seed: int, **lora) -> Path:
    """A LoRA adapter with random (non-zero) A and B, saved by PEFT like a trained one."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = load_base(base_dir)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **lora))
    with torch.no_grad():  # larger than Kaiming's default so every adapter visibly changes the output
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(4.0)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def fresh_base():
    """A loader of fresh copies of the tiny base model (the engine wraps the layers of the copy it gets)."""
    return load_base


@pytest.fixture(scope="session")
def make_adapter():
    """``save_adapter(base_dir, out, seed, **lora)``: a random LoRA adapter saved by PEFT."""
    return save_adapter


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    return make_llama_dir(tmp_path_factory.mktemp("serving-llama"))


@pytest.fixture(scope="session")
def adapter_dirs(base_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serving-adapters")
    return {
        name: save_adapter(base_dir, root / name, seed=i + 1, **lora) for i, (name, lora) in enumerate(ADAPTERS.items())
    }
