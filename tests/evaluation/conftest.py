"""Fixtures of the evaluation tests: tiny offline models, a registry and a job context in tmp.

The models are a byte-level tokenizer with a ChatML template, a 2-layer random Llama
and a 2-layer random BERT-like encoder (no head, like the bundled MiniLM); the helper
functions are plain so they can be reused outside fixtures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer():
    """A byte-level BPE without merges (259 tokens): every text is encodable, offsets are exact."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def save_tiny_llama(path: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama (hidden 32) and its tokenizer, saved as safetensors in ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return Path(path)


def save_tiny_bert(path: Path, seed: int = 0) -> Path:
    """A random 2-layer BERT encoder without a head (like the bundled MiniLM) and its tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return Path(path)


# Fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@dataclass
class EvalEnv:
    """A data dir, a SQLite registry, a dataset service and a CPU job context in tmp_path."""

    tmp_path: Path
    settings: Any
    registry: Any
    datasets: Any
    ctx: Any

    def add_dataset(self, rows: list[dict], name: str = "data") -> Any:
        """Write ``rows`` as JSONL and register them through the real dataset service."""
        path = self.tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return self.datasets.add(path)

    def add_adapter(self, peft_model: Any, base_model: str, dataset_id: int | None, name: str = "a") -> Any:
        """Save a PEFT model as safetensors under tmp_path and register it."""
        out = self.tmp_path / "adapters" / name
        peft_model.save_pretrained(str(out), safe_serialization=True)
        return self.registry.add_adapter(
            name=name, variant="lora", base_model=base_model, dataset_id=dataset_id, path=str(out), sha256="0" * 64
        )


@pytest.fixture
def env(tmp_path) -> EvalEnv:
    from models_db.registry import Registry
    from studio.device import detect_device
    from studio.jobs.context import JobContext
    from studio.services.datasets import DatasetService
    from studio.settings import Settings

    settings = Settings(data_dir=tmp_path)
    settings.ensure_dirs()
    registry = Registry.from_url(f"sqlite:///{tmp_path}/r.db")
    ctx = JobContext(job_id=1, settings=settings, registry=registry, device=detect_device("cpu"), attempt=1)
    yield EvalEnv(tmp_path, settings, registry, DatasetService(registry, settings), ctx)
    registry.dispose()


@pytest.fixture
def single_thread():
    """Tiny models run faster on one thread, and the test machine's cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
