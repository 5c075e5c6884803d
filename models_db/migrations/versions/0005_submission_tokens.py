"""submission tokens: a repeated submit of one form finds its dataset or job instead of adding another

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 01:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLES = ("datasets", "jobs")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("submission_token", sa.String(length=64), nullable=True))
            # Unique, not just indexed: two submits racing with one token cannot both insert. NULLs
            # (the CLI, scripts, older rows) never collide.
            batch_op.create_index(f"ux_{table}_submission_token", ["submission_token"], unique=True)


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ux_{table}_submission_token")
            batch_op.drop_column("submission_token")
