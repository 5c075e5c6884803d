"""Shared fixtures: an isolated data dir and SQLite registry per test, offline Hugging Face."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch the network or the user's own studio data.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# `make test` runs two pytest-xdist processes on a 2-core machine: one torch thread each (and in the
# processes they start), so they share the cores instead of oversubscribing them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Tests that start services, worker processes or browsers share ports, the Redis database and the CPU
# with the processes they start: they run one after another on one xdist process (`--dist loadgroup`),
# beside the rest of the suite on the other.
SERIAL_MARKERS = ("integration", "e2e")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real data the tests read: the samples shipped in the repository (data/samples), nothing outside it.
SAMPLES_DIR = REPO_ROOT / "data" / "samples"


def pytest_collection_modifyitems(config, items):
    """Put every test marked with one of :data:`SERIAL_MARKERS` in one xdist group."""
    for item in items:
        if any(item.get_closest_marker(name) for name in SERIAL_MARKERS):
            item.add_marker(pytest.mark.xdist_group("services"))


@pytest.fixture(scope="session")
def shared_models_dir(tmp_path_factory) -> Path:
    """One converted copy of the bundled models per test session (the GGUF conversion takes ~20 s)."""
    path = Path(os.environ.get("STUDIO_TEST_MODELS_DIR") or tmp_path_factory.mktemp("models"))
    os.environ["STUDIO_MODELS_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """data/samples: the first rows of each real data set (alpaca/, gsm8k/, sst2/, ...), with SOURCE.md each."""
    return SAMPLES_DIR


@pytest.fixture
def settings(tmp_path, monkeypatch):
    """Settings on a fresh data dir with the embedded (SQLite) registry and broker."""
    from studio.settings import Settings

    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "STUDIO_AUTH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path / "data"))
    value = Settings(data_dir=tmp_path / "data")
    value.ensure_dirs()
    # CLI commands build their services once per process; each test gets its own data dir.
    from studio.cli.common import services

    services.cache_clear()
    yield value
    services.cache_clear()


@pytest.fixture
def registry(settings):
    """A migrated SQLite registry in the test's data dir."""
    from models_db.registry import Registry

    reg = Registry.from_url(settings.database_url)
    yield reg
    reg.dispose()
