"""Fixtures of the integration tests: real PostgreSQL and Redis, real worker and `studio` subprocesses.

Two topologies run the same tests:

* ``redis_pg``: a throwaway PostgreSQL database (created and dropped per test,
  because a worker recovers every stale job of its database, so a shared one
  would let one test's leftovers disturb the next) and a Redis queue of its own;
* ``embedded``: SQLite registry and kombu's SQLite transport in ``tmp_path``.

These tests never skip: a service that is down is a failure that says how to
start it (``.ci/run`` does, through ``scripts/ensure_services.sh``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from models_db.registry import Registry

from .helpers import REDIS_URL, Topology, WorkerProcess, wait_for

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
START_SERVICES = "start it with scripts/ensure_services.sh (.ci/run does this)"


# Services -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_models_dir(tmp_path_factory) -> Path:
    """Converted base models shared by every `studio` process of the session (STUDIO_MODELS_DIR).

    A developer may point STUDIO_MODELS_DIR at a lasting folder to skip the
    ~20 s conversion of the bundled model on every run.
    """
    override = os.environ.get("STUDIO_MODELS_DIR")
    return Path(override) if override else tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def postgres_admin():
    """An autocommit connection to the server's `postgres` database, for CREATE/DROP DATABASE."""
    import psycopg

    try:
        conn = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} ({reason}); {START_SERVICES}", pytrace=False)
    yield conn
    conn.close()


@pytest.fixture
def postgres_url(postgres_admin) -> Iterator[str]:
    """A fresh, empty PostgreSQL database; dropped (with its connections) afterwards."""
    name = f"studio_test_{uuid.uuid4().hex[:12]}"
    postgres_admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    postgres_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_client():
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); {START_SERVICES}", pytrace=False)
    yield client
    client.close()


@pytest.fixture
def redis_queue(redis_client) -> Iterator[str]:
    """A queue name of this test's own; its messages (and unacked ones of killed workers) are removed after."""
    queue = f"it-{uuid.uuid4().hex}"
    yield queue
    bindings = [f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"]
    keys = list(redis_client.scan_iter(match=f"{queue}*")) + bindings
    redis_client.delete(*keys)
    # A SIGKILLed worker leaves its message in kombu's `unacked` hash; drop those of this queue.
    for tag, payload in redis_client.hscan_iter("unacked"):
        try:
            routing_key = json.loads(payload)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if routing_key == queue:
            redis_client.hdel("unacked", tag)
            redis_client.zrem("unacked_index", tag)


@pytest.fixture
def redis_pg(postgres_url, redis_queue, tmp_path, shared_models_dir) -> Iterator[Topology]:
    topology = Topology("redis_pg", tmp_path / "data", postgres_url, REDIS_URL, redis_queue, shared_models_dir)
    yield topology
    topology.close()


@pytest.fixture
def embedded(tmp_path, shared_models_dir) -> Iterator[Topology]:
    data = tmp_path / "data"
    topology = Topology(
        "embedded",
        data,
        f"sqlite:///{data / 'studio.db'}",
        f"sqla+sqlite:///{data / 'broker.db'}",
        f"it-{uuid.uuid4().hex}",
        shared_models_dir,
    )
    yield topology
    topology.close()


@pytest.fixture(params=["redis_pg", "embedded"])
def topology(request) -> Topology:
    """Each test using this runs once on Redis + PostgreSQL and once on the embedded broker + SQLite."""
    return request.getfixturevalue(request.param)


# Workers ------------------------------------------------------------------------------


@pytest.fixture
def start_worker(tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    """``start_worker(topology, name=None, **env)``: launch a worker and wait until it is online."""
    started: list[WorkerProcess] = []

    def start(topology: Topology, name: str | None = None, timeout: float = 60, **env: str) -> WorkerProcess:
        name = name or f"it-{uuid.uuid4().hex[:8]}"
        log_path = tmp_path / f"worker-{name}-{len(started)}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "studio", "worker", "--name", name],
                env=topology.env(**env),
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(f"studio@{name}", process, log_path)
        started.append(worker)
        registry: Registry = topology.services().registry

        def online() -> bool:
            if process.poll() is not None:
                pytest.fail(f"worker {name} exited with {process.returncode}:\n{worker.log()[-3000:]}")
            row = next((w for w in registry.list_workers() if w.name == worker.name), None)
            return row is not None and row.pid == process.pid and not row.stopped

        wait_for(online, timeout, lambda: f"worker {name} to come online; its log:\n{worker.log()[-3000:]}", 0.2)
        return worker

    yield start
    for worker in started:
        worker.kill()
