"""registry at scale: (filter, id) indexes and the adapter_metrics table

The Adapters and Jobs tabs page newest-first inside a filter; a (column, id) index
walks that order without sorting and replaces the single-column index. The metrics
index gains the value, so charts downsample a curve from the index alone. Adapter
metrics live in JSON, which SQL cannot list, filter or sort portably, so their
numeric values are copied into adapter_metrics (backfilled here).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# (table, old single-column index, new composite index, its columns)
REPLACED = [
    ("jobs", "ix_jobs_status", "ix_jobs_status_id", ["status", "id"]),
    ("jobs", "ix_jobs_kind", "ix_jobs_kind_id", ["kind", "id"]),
    ("adapters", "ix_adapters_variant", "ix_adapters_variant_id", ["variant", "id"]),
    ("adapters", "ix_adapters_base_model", "ix_adapters_base_model_id", ["base_model", "id"]),
    # Charts downsample a curve from the index alone (per-bucket lowest and highest value).
    ("metrics", "ix_metrics_job_name_step", "ix_metrics_job_name_step_value", ["job_id", "name", "step", "value"]),
]


def upgrade() -> None:
    for table, old, new, columns in REPLACED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(old)
            batch_op.create_index(new, columns, unique=False)
    with op.batch_alter_table("adapters", schema=None) as batch_op:
        batch_op.create_index("ix_adapters_dataset_id_id", ["dataset_id", "id"], unique=False)

    op.create_table(
        "adapter_metrics",
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("adapter_id", "name"),
    )
    with op.batch_alter_table("adapter_metrics", schema=None) as batch_op:
        batch_op.create_index("ix_adapter_metrics_name_value", ["name", "value"], unique=False)
    _backfill_adapter_metrics()


def _backfill_adapter_metrics() -> None:
    """Copy every numeric metric of the existing adapters (the registry keeps them in step from now on)."""
    connection = op.get_bind()
    adapters = sa.table("adapters", sa.column("id", sa.Integer), sa.column("metrics", sa.JSON))
    target = sa.table(
        "adapter_metrics", sa.column("adapter_id", sa.Integer), sa.column("name"), sa.column("value", sa.Float)
    )
    rows = [
        {"adapter_id": adapter_id, "name": name, "value": float(value)}
        for adapter_id, metrics in connection.execute(sa.select(adapters.c.id, adapters.c.metrics))
        for name, value in (metrics or {}).items()
        if isinstance(value, int | float) and not isinstance(value, bool) and len(name) <= 80
    ]
    if rows:
        connection.execute(sa.insert(target), rows)


def downgrade() -> None:
    with op.batch_alter_table("adapter_metrics", schema=None) as batch_op:
        batch_op.drop_index("ix_adapter_metrics_name_value")
    op.drop_table("adapter_metrics")
    with op.batch_alter_table("adapters", schema=None) as batch_op:
        batch_op.drop_index("ix_adapters_dataset_id_id")
    for table, old, new, columns in reversed(REPLACED):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(new)
            batch_op.create_index(old, columns[:-1] if table == "metrics" else columns[:1], unique=False)
