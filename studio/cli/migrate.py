"""`studio migrate`: wait for the registry database, bring its schema to head, print the revision.

docker-compose runs it once before the web and worker containers start (a
prestart step). `studio run` and `studio worker` migrate on start as well, so
it is never required; it makes the migration happen once, early, and visibly.
"""

from __future__ import annotations

import time

import click

from studio.settings import load_settings


@click.command()
@click.option(
    "--wait",
    "wait_seconds",
    default=60.0,
    show_default=True,
    help="Keep retrying an unreachable database for this many seconds.",
)
def migrate(wait_seconds: float) -> None:
    """Create or upgrade the registry schema (DATABASE_URL) and print its revision."""
    from alembic.runtime.migration import MigrationContext

    from models_db.registry import Registry
    from studio.errors import ConfigurationError

    settings = load_settings()
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            registry = Registry.from_url(settings.database_url)
            break
        except ConfigurationError as exc:
            if time.monotonic() >= deadline:
                raise
            click.echo(f"waiting for the database: {exc}", err=True)
            time.sleep(2)
    with registry.engine.connect() as connection:
        revision = MigrationContext.configure(connection).get_current_revision()
    registry.dispose()
    click.echo(f"registry {settings.describe()['registry']} at revision {revision}")
