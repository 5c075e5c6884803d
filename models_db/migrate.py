"""Run Alembic migrations programmatically (the web, workers and tests all call this)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at our migrations and the given database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser treats % as interpolation; URLs may contain it (encoded passwords).
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """Hold an exclusive lock on ``<database>.migrate-lock`` beside a SQLite file.

    SQLite has no advisory locks, and Alembic's DDL does not take the database's write lock
    before it checks for its version table, so two processes starting on a fresh file could
    both create it ("table alembic_version already exists"). The loser of this lock waits,
    then finds the schema at head and does nothing. In-memory databases need no lock.
    """
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        yield
        return
    import fcntl  # POSIX only, like the rest of the studio's process handling

    lock_path = Path(database).with_name(Path(database).name + ".migrate-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade_to_head(engine: Engine) -> None:
    """Bring the registry schema up to date; safe to call from several processes at once."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with _sqlite_file_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Several workers may start at once: serialise their migrations.
            connection.execute(text("SELECT pg_advisory_xact_lock(74150001)"))
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")
