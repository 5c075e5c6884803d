"""Helpers of the composition tests: a tiny base model loader and random PEFT LoRA experts."""

from __future__ import annotations

from pathlib import Path

TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj"]
# Three experts on the same modules: two of rank 4 (equal ranks) and one rank-2 rsLoRA (mixed ranks).
EXPERTS = {
    "e0": dict(r=4, lora_alpha=8),
    "e1": dict(r=4, lora_alpha=16),
    "e2_rslora": dict(r=2, lora_alpha=4, use_rslora=True),
}


def load_base(path: Path):
    """The tiny base model in fp32, eval mode (a fresh copy: a mixture wraps its layers)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def save_expert(base_dir: Path, out: Path, seed: int, targets=TARGETS, **lora) -> Path:
    """A LoRA adapter with random, clearly non-zero A and B, saved by PEFT like a trained one."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(load_base(base_dir), LoraConfig(init_lora_weights=False, target_modules=targets, **lora))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(4.0)
    model.save_pretrained(out)
    return out
