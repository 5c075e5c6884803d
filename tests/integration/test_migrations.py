"""`alembic upgrade head` builds exactly the schema of models_db.tables, on PostgreSQL and SQLite."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from sqlalchemy import DateTime, create_engine

from models_db.migrate import alembic_config
from models_db.name_search import include_name
from models_db.tables import Base, UTCDateTime
from studio.cli.migrate import migrate
from studio.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request, tmp_path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'registry.db'}"


def _only_real_differences(diffs: list) -> list:
    """Drop UTCDateTime-vs-DateTime(timezone=True) type changes: the database only ever sees the impl."""

    def is_decorator_of_same_impl(diff) -> bool:
        if not isinstance(diff, list):  # column-level changes come as lists of tuples
            return False
        return all(
            op == "modify_type"
            and isinstance(new, UTCDateTime)
            and isinstance(old, DateTime)
            and old.timezone == new.impl.timezone
            for op, *_, _kw, old, new in diff
        )

    return [d for d in diffs if not is_decorator_of_same_impl(d)]


def test_upgrade_head_matches_the_tables(database_url):
    url = Settings(database_url_override=database_url).database_url
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")  # the standalone path of migrations/env.py (its own engine)

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "include_name": include_name})
            assert context.get_current_revision() == ScriptDirectory.from_config(cfg).get_current_head()
            assert _only_real_differences(compare_metadata(context, Base.metadata)) == []
    finally:
        engine.dispose()


def test_studio_migrate_command(database_url):
    result = CliRunner().invoke(migrate, [], env={"DATABASE_URL": database_url})
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    assert result.exit_code == 0, result.output
    assert f"at revision {head}" in result.output
