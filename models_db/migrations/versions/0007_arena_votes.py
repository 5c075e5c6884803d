"""arena votes: the playground's blind Arena, one row per voted battle (per-base leaderboards)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "arena_votes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("battle_id", sa.String(length=64), nullable=False),
        sa.Column("base_model", sa.String(length=200), nullable=False),
        sa.Column("target_a", sa.String(length=80), nullable=False),
        sa.Column("target_b", sa.String(length=80), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("winner", sa.String(length=4), nullable=False),
        sa.Column("voter", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_arena_votes_base_model_id", "arena_votes", ["base_model", "id"])
    # Unique: a battle is voted on once, whatever races.
    op.create_index("ux_arena_votes_battle_id", "arena_votes", ["battle_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_arena_votes_battle_id", table_name="arena_votes")
    op.drop_index("ix_arena_votes_base_model_id", table_name="arena_votes")
    op.drop_table("arena_votes")
