"""Services on a data dir shared by one test module, for fixtures whose set-up is too costly to repeat
per test (training adapters, launching the app): the same as the per-test ``settings``, ``registry``
(tests/conftest.py) and ``services`` (tests/ui/conftest.py) fixtures, at module scope."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def module_services(root: Path, **settings_update) -> Iterator:
    """Yield Services (jobs recorded, not queued) on a fresh SQLite registry under ``root``/data."""
    from models_db.registry import Registry
    from studio.cli.common import services as cli_services
    from studio.services.container import Services
    from studio.services.jobs import JobService
    from studio.settings import Settings
    from ui.conftest import RecordingDispatcher

    with pytest.MonkeyPatch.context() as patch:
        for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "STUDIO_AUTH"):
            patch.delenv(name, raising=False)
        patch.setenv("STUDIO_DATA_DIR", str(root / "data"))
        settings = Settings(data_dir=root / "data").model_copy(update=settings_update)
        settings.ensure_dirs()
        cli_services.cache_clear()  # as the settings fixture: CLI commands cache their services per process
        registry = Registry.from_url(settings.database_url)
        try:
            yield Services(settings=settings, registry=registry, jobs=JobService(registry, RecordingDispatcher()))
        finally:
            registry.dispose()
            cli_services.cache_clear()
