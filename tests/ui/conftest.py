"""Fixtures of the UI tests: a tiny model on disk, and Services on a SQLite registry without a broker."""

from __future__ import annotations

import pytest

from ui.tiny_model import save_random_lora, save_tiny_llama


class RecordingDispatcher:
    """Stands in for Celery: remembers the job ids that would have been queued."""

    def __init__(self):
        self.sent: list[int] = []
        self.revoked: list[str | None] = []

    def send(self, job_id: int) -> str:
        self.sent.append(job_id)
        return f"task-{job_id}"

    def revoke(self, task_id):
        self.revoked.append(task_id)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A saved tiny random Llama + tokenizer (session-wide: tests only read it)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_loras(tiny_llama, tmp_path_factory):
    """Two different random LoRAs of the tiny Llama."""
    root = tmp_path_factory.mktemp("loras")
    return [save_random_lora(tiny_llama, root / f"lora{i}", seed=i + 1) for i in range(2)]


@pytest.fixture
def services(settings, registry):
    """Real services on the test's SQLite registry; jobs are recorded, not queued."""
    from studio.services.container import Services
    from studio.services.jobs import JobService

    return Services(settings=settings, registry=registry, jobs=JobService(registry, RecordingDispatcher()))
