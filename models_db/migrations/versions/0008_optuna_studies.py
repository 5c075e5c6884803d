"""optuna studies: the sweeps' Optuna tables in the registry's own database

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-12 00:00:00
"""

from alembic import op

from models_db.optuna_tables import create_optuna_tables, drop_optuna_tables

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Optuna's own metadata: Optuna reads and writes these tables, so they must be exactly its schema.
    create_optuna_tables(op.get_bind())


def downgrade() -> None:
    drop_optuna_tables(op.get_bind())
