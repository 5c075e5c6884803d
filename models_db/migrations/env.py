"""Alembic environment: uses the connection handed over by models_db.migrate when present."""

from alembic import context
from sqlalchemy import create_engine

from models_db.name_search import include_name
from models_db.tables import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _run(conn)


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=include_name,  # the name-search index is backend-specific, outside the tables
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
