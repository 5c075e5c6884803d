"""Fixtures for the composition tests: a tiny random Llama and PEFT LoRA experts of mixed ranks."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest_training import make_llama_dir, make_tokenizer

from composition.experts import EXPERTS, save_expert


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    return make_llama_dir(tmp_path_factory.mktemp("composition-llama"))


@pytest.fixture(scope="session")
def expert_dirs(base_dir, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("composition-experts")
    return [save_expert(base_dir, root / name, seed=10 + i, **lora) for i, (name, lora) in enumerate(EXPERTS.items())]


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()
