"""A tiny world for transfer tests: a colour task, a shared word-level tokenizer, and two tiny bases.

The bases (a Llama and a GPT-NeoX, random from their configs) are first taught, in a few
seconds, to continue the few-shot list of task inputs: a random base writes noise, and the
transfer needs a target that can write task-like inputs at all (a real base LM can).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

THINGS = {
    "sky": "blue",
    "grass": "green",
    "sun": "yellow",
    "fire": "red",
    "snow": "white",
    "night": "black",
    "sea": "blue",
    "leaf": "green",
    "blood": "red",
    "coal": "black",
    "milk": "white",
    "lemon": "yellow",
}
TEMPLATES = ["what color is the {}", "tell me the color of the {}", "the {} has which color"]
COLOURS = sorted(set(THINGS.values()))
WORDS = sorted(
    set(THINGS)
    | set(COLOURS)
    | {w for t in TEMPLATES for w in t.replace("{}", "").split()}
    | {"examples", "of", "task", "inputs", "input", "is", "this", "a", "real", "answer", "yes", "no", "or"}
)
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
# Turns end with EOS, so the engine's greedy answers stop where the trained reply stops.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
HEADER, PREFIX = "examples of task inputs :", "input :"


def make_tokenizer():
    """Word-level, lower-case, with ':' and a newline token (the few-shot list needs both)."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS + [":", "?", "\n"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_tokens([AddedToken("\n", normalized=False)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def task_input(rng: random.Random) -> str:
    return rng.choice(TEMPLATES).format(rng.choice(sorted(THINGS)))


def colour_rows(n: int, seed: int) -> list[dict]:
    """Chat rows of the memorable mapping: any question about a thing -> its colour (one word)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text = task_input(rng)
        thing = [t for t in THINGS if t in text.split()][0]
        rows.append({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": THINGS[thing]}]})
    return rows


def _pretrain(model, tokenizer, seed: int, steps: int = 120) -> None:
    """Teach the random base the few-shot list format (full fine-tune; stands in for pre-training)."""
    import torch

    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        docs = []
        for _ in range(16):
            lines = [HEADER] + [f"{PREFIX} {task_input(rng)}" for _ in range(6)]
            docs.append(tokenizer("\n".join(lines) + "\n", add_special_tokens=False)["input_ids"])
        width = max(map(len, docs))
        ids = torch.tensor([d + [tokenizer.pad_token_id] * (width - len(d)) for d in docs])
        labels = ids.masked_fill(ids == tokenizer.pad_token_id, -100)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def make_base_dir(path: Path, arch: str, seed: int) -> Path:
    """A tiny causal LM of ``arch`` ("llama" or "neox") with the shared tokenizer, pre-taught the list format."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    ids = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            **ids,
        )
        model = LlamaForCausalLM(config)
    else:
        config = GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, **ids)
        model = GPTNeoXForCausalLM(config)
    _pretrain(model, tokenizer, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def cpu_device():
    from studio.device import DeviceInfo

    return DeviceInfo("cpu", "test CPU")


def fast_hyper(**changes):
    from studio.schema import TrainingHyperParams

    values = dict(
        learning_rate=1e-2,
        epochs=1,
        max_steps=40,
        batch_size=16,
        max_length=64,
        warmup_ratio=0.0,
        validation_fraction=0.0,
        eval_every=100_000,
        save_every=100_000,
        log_every=10,
        precision="fp32",
    )
    values.update(changes)
    return TrainingHyperParams(**values)


@pytest.fixture(scope="session")
def llama_base(tmp_path_factory) -> Path:
    return make_base_dir(tmp_path_factory.mktemp("transfer-llama"), "llama", seed=1)


@pytest.fixture(scope="session")
def neox_base(tmp_path_factory) -> Path:
    return make_base_dir(tmp_path_factory.mktemp("transfer-neox"), "neox", seed=2)


@pytest.fixture(scope="session")
def teacher(llama_base, tmp_path_factory):
    """(adapter dir, training rows): a LoRA on the Llama base that answers every question with the colour."""
    from studio.transfer.train import train_chat_lora

    rows = colour_rows(96, seed=3)
    out = tmp_path_factory.mktemp("teacher")
    train_chat_lora(
        rows,
        llama_base,
        out / "adapter",
        hyper=fast_hyper(max_steps=80),
        variant_params={"r": 8, "lora_alpha": 16.0, "lora_dropout": 0.0},
        seed=0,
        device=cpu_device(),
        work_dir=out / "work",
    )
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out / "adapter", rows


@pytest.fixture(scope="session")
def kit(teacher, llama_base, tmp_path_factory):
    """The teacher's transfer kit (seeds + discriminator on the Llama base)."""
    from studio.transfer.kit import build_transfer_kit
    from studio.transfer.options import FewShotFormat, KitOptions

    adapter, rows = teacher
    options = KitOptions(
        positives=48,
        fewshot=FewShotFormat(header=HEADER, prefix=PREFIX),
        question="is this a real input ?",
        max_input_tokens=12,
        hyper=fast_hyper(max_steps=30, learning_rate=5e-3),
    )
    return build_transfer_kit(
        adapter, llama_base, rows, options=options, device=cpu_device(), work_dir=tmp_path_factory.mktemp("kit-work")
    )
