"""Fixtures for training tests: tiny models, chat data and a one-call trainer (see tests/conftest_training.py)."""

import pytest
from conftest_training import (  # noqa: F401  (fixtures are found by name)
    chat_data,
    make_build_ctx,
    tiny_bert_dir,
    tiny_llama_dir,
    tiny_tokenizer,
    train_tiny,
)


@pytest.fixture(scope="session")
def kmer_encoder_dir(tmp_path_factory):
    """A saved tiny BERT encoder with a 3-mer tokenizer (see window_encoder.py)."""
    from window_encoder import make_kmer_encoder

    return make_kmer_encoder(tmp_path_factory.mktemp("kmer-encoder"))
