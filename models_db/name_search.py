"""The index behind adapter name search: pg_trgm on PostgreSQL, an FTS5 trigram table on SQLite.

``LIKE '%term%'`` cannot use a b-tree, so a search read every adapter name. A trigram index
finds the rows containing a substring from the index instead. Both kinds are backend-specific
and optional: migration 0006 creates them where the database can (the pg_trgm extension can be
created; SQLite is 3.34 or newer with FTS5), and the registry falls back to the plain scan where
they are missing, with the same results. They live outside ``models_db.tables`` (the metadata is
portable), so :func:`include_name` hides them when a schema is compared with the tables.

On SQLite the index is an external-content FTS5 table kept in step by triggers on ``adapters``.
A later migration that rebuilds ``adapters`` (a SQLite batch "move and copy") drops those
triggers; the registry then stops using the index (see ``Registry._sqlite_name_index``), so
results stay right, and that migration must recreate them with :func:`create_sqlite_index`.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

POSTGRES_INDEX = "ix_adapters_name_trgm"
FTS_TABLE = "adapter_names"
# FTS5 adds shadow tables named after the virtual table (adapter_names_data, _idx, _docsize, _config).
FTS_TRIGGERS = ("adapter_names_insert", "adapter_names_delete", "adapter_names_update")
# A trigram index can only find terms of at least three characters; shorter ones scan the names.
MIN_INDEXED_TERM = 3
SQLITE_TRIGRAM_VERSION = (3, 34, 0)  # the first SQLite with FTS5's trigram tokenizer


def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    """Alembic's ``include_name`` hook: leave the name-search index and Optuna's tables out of schema comparisons."""
    from models_db.optuna_tables import OPTUNA_TABLES

    if type_ == "table" and name in OPTUNA_TABLES:
        return False
    if type_ == "table" and name is not None and (name == FTS_TABLE or name.startswith(FTS_TABLE + "_")):
        return False
    return not (type_ == "index" and name == POSTGRES_INDEX)


def create_postgres_index(connection: Connection) -> bool:
    """Create pg_trgm (if it can be) and a GIN trigram index on ``adapters.name``; False if it cannot.

    The extension is created inside a SAVEPOINT: without the privilege (or the contrib package)
    the error is rolled back alone and the migration goes on; searches then scan the names.
    """
    try:
        with connection.begin_nested():
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except DBAPIError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        log.warning("pg_trgm is not available (%s): adapter name search scans every name", reason)
        return False
    connection.execute(text(f"CREATE INDEX IF NOT EXISTS {POSTGRES_INDEX} ON adapters USING gin (name gin_trgm_ops)"))
    return True


def drop_postgres_index(connection: Connection) -> None:
    """Drop the trigram index (the extension stays: other databases' objects may use it)."""
    connection.execute(text(f"DROP INDEX IF EXISTS {POSTGRES_INDEX}"))


def create_sqlite_index(connection: Connection) -> bool:
    """Create the FTS5 trigram table over adapter names, its sync triggers, and fill it; False if unsupported."""
    if sqlite3.sqlite_version_info < SQLITE_TRIGRAM_VERSION:
        log.warning("SQLite %s has no trigram tokenizer (3.34+): adapter name search scans every name",
                    sqlite3.sqlite_version)  # fmt: skip
        return False
    try:
        connection.execute(
            text(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5("
                "name, content='adapters', content_rowid='id', tokenize='trigram')"
            )
        )
    except DBAPIError as exc:  # SQLite built without FTS5
        log.warning("no FTS5 in this SQLite (%s): adapter name search scans every name", exc.orig)
        return False
    insert, delete, update = FTS_TRIGGERS
    add_new = f"INSERT INTO {FTS_TABLE}(rowid, name) VALUES (new.id, new.name);"
    drop_old = f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, name) VALUES ('delete', old.id, old.name);"
    for statement in (
        f"CREATE TRIGGER IF NOT EXISTS {insert} AFTER INSERT ON adapters BEGIN {add_new} END",
        f"CREATE TRIGGER IF NOT EXISTS {delete} AFTER DELETE ON adapters BEGIN {drop_old} END",
        f"CREATE TRIGGER IF NOT EXISTS {update} AFTER UPDATE OF name ON adapters BEGIN {drop_old} {add_new} END",
        f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('rebuild')",  # index the adapters already there
    ):
        connection.execute(text(statement))
    return True


def drop_sqlite_index(connection: Connection) -> None:
    """Drop the FTS5 table and its triggers."""
    for trigger in FTS_TRIGGERS:
        connection.execute(text(f"DROP TRIGGER IF EXISTS {trigger}"))
    connection.execute(text(f"DROP TABLE IF EXISTS {FTS_TABLE}"))


def fts_phrase(term: str) -> str:
    """``term`` as an FTS5 phrase: every character literal (quotes doubled), so it matches as a substring."""
    return '"' + term.replace('"', '""') + '"'
