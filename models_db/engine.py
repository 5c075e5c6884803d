"""Engines and sessions built from the settings URL, tuned per backend."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

from studio.errors import ConfigurationError


def create_registry_engine(url: str) -> Engine:
    """Create an engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys.

    WAL lets the web process read while a worker writes metrics; the busy
    timeout makes concurrent writers wait instead of failing.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with a long message
        raise ConfigurationError(f"DATABASE_URL {url!r} is malformed: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


# How long a new connection keeps trying to switch a busy database file to WAL.
WAL_SWITCH_DEADLINE_S = 30.0


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _switch_to_wal(cursor) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another process holds the file.

    Switching a fresh (rollback-journal) file to WAL needs an exclusive lock, and SQLite may answer
    "database is locked" at once instead of waiting in its busy handler (it refuses to wait where
    waiting could deadlock). Several processes opening a new registry together (a worker and a CLI
    started at the same moment, on a loaded machine) hit exactly that, so the switch is retried with
    back-off until ``WAL_SWITCH_DEADLINE_S``; any other error, or the deadline, is raised.
    """
    deadline = time.monotonic() + WAL_SWITCH_DEADLINE_S
    pause = 0.02
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def create_session_factory(engine: Engine) -> sessionmaker:
    """Sessions that keep loaded rows readable after commit (we hand them to the UI)."""
    return sessionmaker(bind=engine, expire_on_commit=False)
