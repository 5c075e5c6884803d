"""eval results: one row per (model, dataset, metric), apart from the adapters' training metrics

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eval_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_key", sa.String(length=260), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=True),
        sa.Column("base_model", sa.String(length=200), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=80), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("truncated", sa.Integer(), nullable=True),
        sa.Column("max_new_tokens", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_key", "dataset_id", "metric", name="uq_eval_results_model_dataset"),
    )
    op.create_index("ix_eval_results_adapter_id", "eval_results", ["adapter_id"])
    op.create_index("ix_eval_results_dataset_id", "eval_results", ["dataset_id"])


def downgrade() -> None:
    op.drop_index("ix_eval_results_dataset_id", table_name="eval_results")
    op.drop_index("ix_eval_results_adapter_id", table_name="eval_results")
    op.drop_table("eval_results")
