"""Settings: embedded defaults, production switches by environment, one-line errors."""

from __future__ import annotations

import pytest

from studio.errors import ConfigurationError
from studio.settings import Settings, load_settings


def test_embedded_defaults_live_in_the_data_dir(tmp_path, monkeypatch):
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "STUDIO_EMBEDDED_WORKER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.database_url == f"sqlite:///{tmp_path / 'studio.db'}"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    assert settings.broker_is_embedded and settings.start_embedded_worker
    assert (settings.host, settings.port) == ("127.0.0.1", 7860)


def test_production_topology_is_selected_by_environment_only(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", "postgresql://studio:secret@db:5432/studio")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("STUDIO_PORT", "8080")
    settings = load_settings()
    # psycopg 3 is the driver that is installed
    assert settings.database_url == "postgresql+psycopg://studio:secret@db:5432/studio"
    assert settings.broker_url == "redis://redis:6379/0"
    assert not settings.broker_is_embedded and not settings.start_embedded_worker
    assert settings.port == 8080
    assert "secret" not in settings.describe()["registry"]


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("DATABASE_URL", "mysql://root@localhost/x", "DATABASE_URL"),
        ("DATABASE_URL", "not a url", "DATABASE_URL"),
        ("CELERY_BROKER_URL", "notaurl", "CELERY_BROKER_URL"),
        ("CELERY_BROKER_URL", "redis://", "no host"),
        ("STUDIO_PORT", "99999", "STUDIO_PORT"),
        ("STUDIO_DEVICE", "tpu", "STUDIO_DEVICE"),
    ],
)
def test_malformed_settings_give_one_clear_line(monkeypatch, tmp_path, name, value, fragment):
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message and "Traceback" not in message


def test_explicit_embedded_worker_override(tmp_path):
    settings = Settings(data_dir=tmp_path, broker_url_override="redis://localhost:6379/0", embedded_worker=True)
    assert settings.start_embedded_worker


def test_torch_threads_setting_is_validated_and_applied(monkeypatch):
    import torch

    from studio.device import apply_torch_threads
    from studio.settings import Settings

    monkeypatch.setenv("STUDIO_TORCH_THREADS", "1")
    assert Settings().torch_threads == 1
    monkeypatch.setenv("STUDIO_TORCH_THREADS", "0")
    with pytest.raises(ValueError, match="torch_threads|STUDIO_TORCH_THREADS"):
        Settings()
    before = torch.get_num_threads()
    try:
        assert apply_torch_threads(1) == 1 == torch.get_num_threads()
        assert apply_torch_threads(None) == 1  # unset: torch's choice is left alone
    finally:
        torch.set_num_threads(before)
