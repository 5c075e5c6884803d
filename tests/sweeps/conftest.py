"""Fixtures for sweep tests: the tiny Llama of tests/conftest_training.py."""

from conftest_training import tiny_llama_dir  # noqa: F401  (fixtures are found by name)
