"""Helpers for the ICM-LoRA tests: random LoRAs of the tiny Llama and noisy checkpoints around them."""

from __future__ import annotations

from pathlib import Path

# Spec §0's tiny adapter targets (B non-zero) at rank 2 by default: D = 1088 keeps the CVAE tests fast.
TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj"]
PER_TASK = 20
NOISE = 0.1  # checkpoint spread around its task's LoRA, in units of each tensor's std


def random_lora(base_dir: Path, out: Path, seed: int, r: int = 2) -> Path:
    """A random (non-zero) PEFT LoRA on the tiny Llama, saved with PEFT itself."""
    import torch
    from peft import LoraConfig, get_peft_model

    from studio.training.models import load_base_model

    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, init_lora_weights=False)
    model = get_peft_model(load_base_model(base_dir, "causal-lm"), config)
    with torch.no_grad():  # PEFT's non-zero init is tiny: make the change to the outputs visible
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.mul_(5.0)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def noisy_checkpoints(centre: Path, out: Path, n: int, seed: int) -> list[Path]:
    """``n`` PEFT dirs whose tensors are ``centre``'s plus Gaussian noise (NOISE × each tensor's std)."""
    import torch

    from studio.adapter_generation.flatten import load_lora_state, read_adapter_config, write_peft_dir

    state, config = load_lora_state(centre), read_adapter_config(centre)
    rng = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(n):
        noisy = {k: v + NOISE * v.std() * torch.randn(v.shape, generator=rng) for k, v in state.items()}
        paths.append(write_peft_dir(noisy, config, out / f"ckpt-{i:02d}"))
    return paths


def number_rows(n: int = 12) -> list[dict]:
    """A second task: counting conversations (a different kind of text from chat_rows' colours)."""
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    return [
        {
            "messages": [
                {"role": "user", "content": f"{words[i % 8]} {words[i % 8 + 1]}"},
                {"role": "assistant", "content": words[i % 8 + 2]},
            ]
        }
        for i in range(n)
    ]
