"""The composition root: settings -> registry, queue and services. UI and CLI start here."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from models_db.registry import Registry
from studio.services.jobs import JobService
from studio.services.system import SystemStatus, check_broker, system_status
from studio.settings import Settings, load_settings


@dataclass
class Services:
    """Every service of one process, sharing one registry connection pool."""

    settings: Settings
    registry: Registry
    jobs: JobService

    @cached_property
    def datasets(self):
        from studio.services.datasets import DatasetService

        return DatasetService(self.registry, self.settings)

    @cached_property
    def adapters(self):
        from studio.services.adapters import AdapterService

        return AdapterService(self.registry, self.settings)

    @cached_property
    def personalised(self):
        """Users and per-user adapters of RecLoRA bundles."""
        from studio.services.personalised import PersonalisedService

        return PersonalisedService(self.registry, self.settings)

    @cached_property
    def playground(self):
        """The process's one serving engine (per base model) and PEFT pool: the playground and the /v1 API share it."""
        from studio.services.playground import PlaygroundService

        return PlaygroundService(self.registry, self.settings)

    def base_models(self, task: str | None = None) -> list:
        """Registered base models (bundled ones are registered at start-up), optionally of one task."""
        return [m for m in self.registry.list_base_models() if task is None or m.task == task]

    def status(self) -> SystemStatus:
        return system_status(self.registry, self.settings)


def build_services(settings: Settings | None = None, *, verify_broker: bool = False) -> Services:
    """Connect to the registry (migrating it) and the queue described by ``settings``.

    With ``verify_broker`` an unreachable broker is a one-line ConfigurationError
    now rather than a failure at the first submit.
    """
    from workers.celery_app import create_celery_app
    from workers.dispatch import CeleryDispatcher

    settings = settings or load_settings()
    settings.ensure_dirs()
    registry = Registry.from_url(settings.database_url)
    if verify_broker:
        check_broker(settings.broker_url)
    dispatcher = CeleryDispatcher(
        create_celery_app(settings), settings.queue_name, supports_broadcast=not settings.broker_is_embedded
    )
    return Services(settings=settings, registry=registry, jobs=JobService(registry, dispatcher))
