"""Processes started at the same moment on a fresh registry all come up, with one schema and no traceback.

`studio worker &` followed at once by `studio train … --wait` on a new data directory made both
processes run the migration; on SQLite one of them could die with "table … already exists".
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from models_db.migrate import alembic_config
from models_db.tables import Base

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PROCESSES = 6

# Each process imports first, then sleeps until the shared start time, so that the migrations overlap.
OPEN_REGISTRY = """
import sys, time
from models_db.registry import Registry
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
Registry.from_url(sys.argv[1]).dispose()
print("up")
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request, tmp_path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'fresh' / 'studio.db'}"


def _start_together(url: str, count: int, env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """``count`` processes opening the registry at ``url`` at the same instant, and two `studio migrate`."""
    start = time.time() + 6.0  # time for every interpreter to import the registry first
    opener = [sys.executable, "-c", OPEN_REGISTRY, url, str(start)]
    procs = [
        subprocess.Popen(opener, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    # And the CLI's own start-up path, racing them (it imports faster than the start time).
    cli_env = {**env, "DATABASE_URL": url}
    procs += [
        subprocess.Popen(
            [sys.executable, "-m", "studio", "migrate", "--wait", "0"],
            env=cli_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: time.sleep(max(0.0, start - 0.5 - time.time())),
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_processes_starting_together_all_come_up(fresh_url, tmp_path):
    if fresh_url.startswith("sqlite"):
        Path(fresh_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for attempt in range(2):  # two rounds: the race does not lose every time
        if attempt and fresh_url.startswith("sqlite"):
            db = Path(fresh_url.removeprefix("sqlite:///"))
            for leftover in db.parent.iterdir():
                leftover.unlink()
        results = _start_together(fresh_url, PROCESSES, env)
        failures = [r.stderr.strip().splitlines()[-1:] for r in results if r.returncode != 0 or "Traceback" in r.stderr]
        assert failures == [], f"round {attempt}: {len(failures)} of {len(results)} processes failed: {failures}"
        assert [r.stdout.strip() for r in results[:PROCESSES]] == ["up"] * PROCESSES
        assert all("at revision" in r.stdout for r in results[PROCESSES:])

    engine = create_engine(fresh_url)
    try:
        with engine.connect() as connection:
            revision = MigrationContext.configure(connection).get_current_revision()
            tables = set(inspect(connection).get_table_names())
        assert revision == ScriptDirectory.from_config(alembic_config(fresh_url)).get_current_head()
        assert set(Base.metadata.tables) <= tables
    finally:
        engine.dispose()
