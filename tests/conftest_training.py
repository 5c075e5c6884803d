"""Tiny models, tokenizer and datasets shared by tests/training and tests/variants.

Everything is built from configs in a temp dir (no downloads): a word-level
tokenizer with a chat template, a 2-layer Llama (hidden 32) and a 2-layer BERT.
Imported by the conftest.py of both test packages (``tests/`` is on sys.path).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

WORDS = [
    "the",
    "a",
    "is",
    "of",
    "and",
    "what",
    "color",
    "sky",
    "grass",
    "sun",
    "sea",
    "snow",
    "fire",
    "night",
    "blue",
    "green",
    "yellow",
    "red",
    "white",
    "black",
    "dark",
    "good",
    "great",
    "nice",
    "fine",
    "bad",
    "awful",
    "poor",
    "sad",
    "movie",
    "film",
    "show",
    "book",
    "day",
    "it",
    "was",
    "very",
    "really",
    "quite",
    "so",
    "tell",
    "me",
    "about",
    "please",
    "answer",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "yes",
    "no",
    "hello",
    "hi",
]
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
COLORS = {"sky": "blue", "grass": "green", "sun": "yellow", "fire": "red", "snow": "white", "night": "black"}


def make_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """A word-level fast tokenizer over WORDS (+ digits of nothing else), with offsets and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL[4:],
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


def make_llama_dir(path: Path, seed: int = 0) -> Path:
    """A tiny random LlamaForCausalLM + tokenizer saved as a local model directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_bert_dir(path: Path, seed: int = 0) -> Path:
    """A tiny random BertModel (encoder only, like the bundled MiniLM) + tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = make_tokenizer(chat_template=None)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def chat_rows(n: int = 12) -> list[dict]:
    """Short Q/A conversations about colours (learnable by a tiny model in a few steps)."""
    items = list(COLORS.items())
    rows = []
    for i in range(n):
        thing, color = items[i % len(items)]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"what color is the {thing}"},
                    {"role": "assistant", "content": f"the {thing} is {color}"},
                ]
            }
        )
    return rows


def classification_rows(n: int = 16) -> list[dict]:
    """A trivially separable sentiment set: the first word decides the label."""
    good = ["good movie", "great film", "nice show", "good book", "great day", "nice film", "good show", "fine day"]
    bad = ["bad movie", "awful film", "poor show", "bad book", "sad day", "awful show", "poor film", "bad day"]
    rows = []
    for i in range(n // 2):
        rows.append({"text": good[i % len(good)], "label": "positive"})
        rows.append({"text": bad[i % len(bad)], "label": "negative"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def register_chat_dataset(registry, path: Path, rows: int = 12):
    """Register the chat JSONL at ``path`` (already written) as a dataset row, as DatasetService would."""
    import hashlib

    return registry.add_dataset(
        name="colours",
        format="chat",
        rows=rows,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        original_path=str(path),
        stored_path=str(path),
        size_bytes=path.stat().st_size,
        mapping={},
        report={"task": "causal-lm"},
    )


def make_request(variant: str = "lora", params: dict | None = None, seed: int = 7, task: str | None = None, **hyper):
    """A small TrainRequest: few steps, no validation by default, logging every step."""
    from studio.schema import TrainingHyperParams, TrainRequest

    settings = dict(
        learning_rate=1e-2,
        max_steps=4,
        batch_size=4,
        grad_accum=1,
        max_length=64,
        warmup_ratio=0.0,
        validation_fraction=0.0,
        log_every=1,
        eval_every=1000,
        save_every=1000,
    )
    settings.update(hyper)
    extra = {"task": task} if task else {}
    return TrainRequest(
        dataset_id=1,
        base_model="tiny",
        variant=variant,
        variant_params=params or {},
        hyper=TrainingHyperParams(**settings),
        seed=seed,
        **extra,
    )


def cpu_device():
    from studio.device import DeviceInfo

    return DeviceInfo("cpu", "test CPU")


def training_device():
    """Where ``train_tiny`` trains: the CPU, or ``$STUDIO_TEST_DEVICE`` (e.g. ``cuda`` on a GPU machine)."""
    import os

    from studio.device import detect_device

    wanted = os.environ.get("STUDIO_TEST_DEVICE", "cpu")
    return cpu_device() if wanted == "cpu" else detect_device(wanted)


# Fixtures (imported by tests/training/conftest.py and tests/variants/conftest.py) -----------------


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A saved 2-layer Llama (hidden 32) + word-level tokenizer with a chat template."""
    return make_llama_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture
def chat_data(tmp_path):
    """TrainingData over 12 short colour conversations."""
    from studio.training.setup import TrainingData

    return TrainingData(path=write_jsonl(tmp_path / "chat.jsonl", chat_rows(12)), sha256="test", name="chat")


@pytest.fixture
def train_tiny(tiny_llama_dir, chat_data, tmp_path):
    """train_tiny(variant, params=None, reporter=None, work="run", resume=None, data=None, **hyper) -> result."""
    from studio.progress import MemoryReporter
    from studio.training.loop import run_training

    def train(variant, params=None, reporter=None, work="run", resume=None, data=None, **hyper):
        request = make_request(variant, params, **hyper)
        return run_training(
            request,
            reporter or MemoryReporter(),
            settings=None,
            device=training_device(),
            work_dir=tmp_path / work,
            resume_checkpoint=resume,
            dataset=data or chat_data,
            base_path=tiny_llama_dir,
        )

    return train


@pytest.fixture
def make_build_ctx(tiny_llama_dir, tmp_path):
    """make_build_ctx(total_steps=4, target_modules=None) -> BuildContext over a fresh tiny Llama."""
    import torch

    from studio.training.data import collate
    from studio.training.models import load_base_model, load_tokenizer_for
    from studio.training.tokenise import encode_rows
    from studio.variants.base import BuildContext
    from studio.variants.targets import default_target_modules

    def make(total_steps: int = 4, target_modules=None, seed: int = 0):
        torch.manual_seed(seed)
        tokenizer = load_tokenizer_for(tiny_llama_dir)
        model = load_base_model(tiny_llama_dir, "causal-lm")
        examples = encode_rows(chat_rows(8), tokenizer, task="causal-lm", max_length=64).examples

        def batches(n):
            for k in range(n):
                picked = [examples[(4 * k + j) % len(examples)] for j in range(4)]
                yield collate(picked, tokenizer.pad_token_id)

        return BuildContext(
            model=model,
            tokenizer=tokenizer,
            task="causal-lm",
            target_modules=target_modules or default_target_modules(model),
            modules_to_save=[],
            calibration_batches=batches,
            total_steps=total_steps,
            seed=seed,
            device=torch.device("cpu"),
            learning_rate=1e-2,
            warmup_steps=0,
            weight_decay=0.0,
            work_dir=tmp_path / "build",
        )

    return make


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A saved 2-layer BertModel (encoder only) + tokenizer."""
    return make_bert_dir(tmp_path_factory.mktemp("tiny-bert"))
