"""Tiny models and rows for the DP-SGD tests: the spec's tiny Llama with a non-zero LoRA, rows with a masked prompt."""

from __future__ import annotations

TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj"]
PROMPT = 3  # leading tokens of every row that are prompt (labels IGNORE_INDEX)


def tiny_lora(seed: int = 0, freeze_a: bool = False):
    """LlamaConfig(vocab 256, hidden 64, 2 layers) with LoRA r=4 on four modules, B non-zero (init_lora_weights=False)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
    )
    base = LlamaForCausalLM(config).float()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    if freeze_a:
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.requires_grad_(False)
    model.train()
    return model


def encoded_rows(n: int, seed: int = 0, min_len: int = 6, max_len: int = 14) -> list[dict]:
    """Rows as the studio's tokeniser makes them: input_ids and labels, the prompt's labels IGNORE_INDEX."""
    import torch

    from studio.training.tokenise import IGNORE_INDEX

    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
        ids = torch.randint(1, 256, (length,), generator=gen).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * PROMPT + ids[PROMPT:]})
    return rows
