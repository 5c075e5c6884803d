"""adapter name search through a trigram index (pg_trgm GIN on PostgreSQL, FTS5 trigram on SQLite)

Both are optional: where the database cannot make them (no pg_trgm, SQLite older than 3.34
or without FTS5) the migration logs why and searches keep scanning the names.
See models_db/name_search.py.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09 00:00:00
"""

from alembic import op

from models_db import name_search

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name == "postgresql":
        name_search.create_postgres_index(connection)
    elif connection.dialect.name == "sqlite":
        name_search.create_sqlite_index(connection)


def downgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name == "postgresql":
        name_search.drop_postgres_index(connection)
    elif connection.dialect.name == "sqlite":
        name_search.drop_sqlite_index(connection)
