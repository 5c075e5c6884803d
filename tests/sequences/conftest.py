"""Fixtures shared by the sequence tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def studio(tmp_path):
    """A data dir, a SQLite registry, the dataset and adapter services and a CPU job context factory."""
    import torch

    from models_db.registry import Registry
    from studio.device import detect_device
    from studio.jobs.context import JobContext
    from studio.services.adapters import AdapterService
    from studio.services.datasets import DatasetService
    from studio.settings import Settings

    settings = Settings(data_dir=tmp_path / "data")
    settings.ensure_dirs()
    registry = Registry.from_url(f"sqlite:///{tmp_path}/r.db")

    class Studio:
        datasets = DatasetService(registry, settings)
        adapters = AdapterService(registry, settings)

        def __init__(self):
            self.settings, self.registry = settings, registry

        def ctx(self, request):
            """The context of a job row holding ``request`` (adapters and logs point at their job)."""
            job = registry.create_job(kind=request.kind, request=request.model_dump(mode="json"), schema_version=1)
            return JobContext(
                job_id=job.id, settings=settings, registry=registry, device=detect_device("cpu"), attempt=1
            )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models run faster on one thread, and the machine's cores are shared
    yield Studio()
    torch.set_num_threads(threads)
    registry.dispose()
