"""Fixtures for ICM-LoRA tests: a tiny Llama, LoRA checkpoints of two tasks, the tasks' rows."""

from __future__ import annotations

import pytest
from conftest_training import chat_rows, tiny_llama_dir  # noqa: F401  (fixtures are found by name)
from icm_lab import PER_TASK, noisy_checkpoints, number_rows, random_lora


@pytest.fixture(scope="session")
def task_checkpoints(tiny_llama_dir, tmp_path_factory):  # noqa: F811
    """{"colours": (centre LoRA dir, [20 checkpoint dirs]), "numbers": (...)}: two tasks' checkpoints."""
    root = tmp_path_factory.mktemp("icm-checkpoints")
    out = {}
    for seed, task in ((1, "colours"), (2, "numbers")):
        centre = random_lora(tiny_llama_dir, root / task / "centre", seed)
        out[task] = (centre, noisy_checkpoints(centre, root / task, PER_TASK, seed=100 + seed))
    return out


@pytest.fixture(scope="session")
def task_rows():
    """Canonical chat rows of the two tasks."""
    return {"colours": chat_rows(30), "numbers": number_rows(30)}
