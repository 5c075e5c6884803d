"""Fixtures for training tests: tiny models, chat data and a one-call trainer (see tests/conftest_training.py)."""

from conftest_training import (  # noqa: F401  (fixtures are found by name)
    chat_data,
    make_build_ctx,
    tiny_bert_dir,
    tiny_llama_dir,
    tiny_tokenizer,
    train_tiny,
)
