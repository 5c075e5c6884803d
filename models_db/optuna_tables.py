"""Optuna's study tables, kept in the registry's own database beside ours (sweeps, studio.sweeps).

Optuna names its tables ``studies``, ``trials``, … (none clashes with ours) but would also
stamp and check the Alembic version table, which is ours. So our migration 0008 creates its
tables from Optuna's own metadata, and :func:`studio.sweeps.driver.open_storage` opens the
storage without letting Optuna create or version-check anything. The tables of Optuna's
schema head ``v3.2.0.a`` (Optuna 3.2 to 5.x) are what 0008 creates.
"""

from __future__ import annotations

from sqlalchemy import Connection

OPTUNA_TABLES = frozenset(
    {
        "studies",
        "study_directions",
        "study_user_attributes",
        "study_system_attributes",
        "trials",
        "trial_user_attributes",
        "trial_system_attributes",
        "trial_params",
        "trial_values",
        "trial_intermediate_values",
        "trial_heartbeats",
        "version_info",
    }
)


def optuna_metadata():
    """Optuna's SQLAlchemy metadata (its RDB storage models)."""
    from optuna.storages._rdb import models  # Optuna's own table definitions; no public path exists

    return models.BaseModel.metadata


def create_optuna_tables(connection: Connection) -> None:
    """Create Optuna's tables that are missing (safe to repeat)."""
    optuna_metadata().create_all(connection, checkfirst=True)


def drop_optuna_tables(connection: Connection) -> None:
    """Drop Optuna's tables and every study in them."""
    optuna_metadata().drop_all(connection, checkfirst=True)
