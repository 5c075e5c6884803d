"""A new connection retries switching a busy SQLite file to WAL instead of failing at once."""

from __future__ import annotations

import sqlite3

import pytest

from models_db import engine as engine_module


class FlakyCursor:
    """Answers "database is locked" to the first ``busy`` journal-mode switches, like a file another process holds."""

    def __init__(self, busy: int, error: str = "database is locked") -> None:
        self.busy, self.error, self.calls = busy, error, 0

    def execute(self, sql: str) -> None:
        assert sql == "PRAGMA journal_mode=WAL"
        self.calls += 1
        if self.calls <= self.busy:
            raise sqlite3.OperationalError(self.error)


def test_a_locked_file_is_retried_until_the_switch_succeeds(monkeypatch):
    monkeypatch.setattr(engine_module.time, "sleep", lambda _s: None)
    cursor = FlakyCursor(busy=3)
    engine_module._switch_to_wal(cursor)
    assert cursor.calls == 4


def test_other_errors_and_the_deadline_are_raised(monkeypatch):
    monkeypatch.setattr(engine_module.time, "sleep", lambda _s: None)
    cursor = FlakyCursor(busy=1, error="disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        engine_module._switch_to_wal(cursor)
    assert cursor.calls == 1
    monkeypatch.setattr(engine_module, "WAL_SWITCH_DEADLINE_S", 0.0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        engine_module._switch_to_wal(FlakyCursor(busy=10))


def test_registry_engines_still_open_in_wal_with_the_busy_timeout(tmp_path):
    engine = engine_module.create_registry_engine(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert raw.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
            assert raw.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    finally:
        engine.dispose()
