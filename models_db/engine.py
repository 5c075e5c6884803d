"""Engines and sessions built from the settings URL, tuned per backend."""

from __future__ import annotations

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


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_session_factory(engine: Engine) -> sessionmaker:
    """Sessions that keep loaded rows readable after commit (we hand them to the UI)."""
    return sessionmaker(bind=engine, expire_on_commit=False)
