"""Fixtures for merge tests: a tiny Llama, PEFT adapters saved and registered, a job context."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest_training import tiny_llama_dir  # noqa: F401  (fixtures are found by name)

TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]


class RecordingDispatcher:
    """Stands in for Celery: remembers what was queued."""

    def __init__(self):
        self.sent: list[int] = []

    def send(self, job_id: int) -> str:
        self.sent.append(job_id)
        return f"task-{job_id}"

    def revoke(self, task_id: str | None) -> None:
        pass


@dataclass
class MergeEnv:
    """A data dir, a SQLite registry, a job service and a CPU job context in tmp_path."""

    tmp_path: Path
    settings: Any
    registry: Any
    jobs: Any
    ctx: Any
    base_dir: Path

    def adapter(self, name: str, seed: int, base: Path | None = None, **lora: Any) -> Any:
        """A random (non-zero) PEFT adapter on the tiny Llama, saved and registered as ``lora``."""
        import torch
        from peft import LoraConfig, get_peft_model

        from studio.training.models import load_base_model

        settings = {"r": 4, "lora_alpha": 8, "target_modules": TARGETS, "init_lora_weights": False, **lora}
        torch.manual_seed(seed)
        model = get_peft_model(load_base_model(base or self.base_dir, "causal-lm"), LoraConfig(**settings))
        with torch.no_grad():  # PEFT's non-zero init is tiny: make the changes clearly visible
            for param_name, param in model.named_parameters():
                if "lora_" in param_name:
                    param.mul_(5.0)
        out = self.tmp_path / "adapters" / name
        model.save_pretrained(str(out), safe_serialization=True)
        return self.registry.add_adapter(
            name=name, variant="lora", base_model=str(base or self.base_dir), path=str(out), sha256="0" * 64
        )


@pytest.fixture
def merge_env(tmp_path, tiny_llama_dir):  # noqa: F811
    from models_db.registry import Registry
    from studio.device import detect_device
    from studio.jobs.context import JobContext
    from studio.services.jobs import JobService
    from studio.settings import Settings

    settings = Settings(data_dir=tmp_path / "data")
    settings.ensure_dirs()
    registry = Registry.from_url(f"sqlite:///{tmp_path}/r.db")
    ctx = JobContext(job_id=1, settings=settings, registry=registry, device=detect_device("cpu"), attempt=1)
    yield MergeEnv(tmp_path, settings, registry, JobService(registry, RecordingDispatcher()), ctx, tiny_llama_dir)
    registry.dispose()
