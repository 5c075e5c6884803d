"""Fixtures of the fidelity tests: the shared studio ``lab`` (see fidelity_lab.py) and the tiny Llama it uses."""

from conftest_training import tiny_llama_dir  # noqa: F401  (fixtures are found by name)
from fidelity_lab import lab  # noqa: F401
