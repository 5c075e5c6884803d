"""The registry is the outbox: jobs survive a broker that is down, or restarted without persistence."""

from __future__ import annotations

import uuid

import pytest

from studio.jobs.outbox import queue_notice
from studio.schema import CheckRequest

from .helpers import RedisServer, Topology, free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# Workers re-send quickly here; the default waits minutes before suspecting a lost message.
OUTBOX_ENV = {"STUDIO_OUTBOX_SECONDS": "0.5", "STUDIO_RESEND_AFTER": "2"}


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(free_port(), tmp_path / "redis.log")
    yield server
    server.stop()


@pytest.fixture
def private_redis_pg(postgres_url, redis_server, tmp_path, shared_models_dir):
    topology = Topology(
        "private_redis_pg",
        tmp_path / "data",
        postgres_url,
        redis_server.url,
        f"it-{uuid.uuid4().hex}",
        shared_models_dir,
    )
    yield topology
    topology.close()


def _wait_all_finished(svc, job_ids: list[int], timeout: float) -> list:
    def finished():
        jobs = [svc.jobs.get(i) for i in job_ids]
        return jobs if all(j.status in ("succeeded", "failed", "cancelled") for j in jobs) else None

    return wait_for(finished, timeout, lambda: f"jobs {[(j.id, j.status) for j in map(svc.jobs.get, job_ids)]}")


def test_a_job_submitted_while_redis_is_down_runs_when_it_is_back(private_redis_pg, redis_server, start_worker):
    svc = private_redis_pg.services()

    job = svc.jobs.submit(CheckRequest(steps=3))  # nothing listens on the broker's port yet

    assert job.status == "queued" and job.sent_at is None
    assert f"127.0.0.1:{redis_server.port}" in queue_notice(job)
    redis_server.start()
    worker = start_worker(private_redis_pg, **OUTBOX_ENV)
    (done,) = _wait_all_finished(svc, [job.id], 60)
    assert done.status == "succeeded", done.error
    assert (done.worker_host, done.attempts, done.sends) == (worker.name, 1, 1)
    assert any("reachable again" in line.message for line in svc.jobs.logs(job.id))


def test_jobs_lost_by_a_redis_restart_are_resent_and_all_finish(private_redis_pg, redis_server, start_worker):
    svc = private_redis_pg.services()
    redis_server.start()
    start_worker(private_redis_pg, **OUTBOX_ENV)
    # Keep the only worker busy so the next jobs wait in Redis.
    busy = svc.jobs.submit(CheckRequest(steps=60, step_seconds=0.05))
    wait_for(lambda: svc.jobs.get(busy.id).status == "running", 60, "the long job to start")
    waiting = [svc.jobs.submit(CheckRequest(steps=3)).id for _ in range(3)]
    assert redis_server.queue_length(private_redis_pg.queue) == 3

    redis_server.restart()  # no persistence: the three messages are gone

    assert redis_server.queue_length(private_redis_pg.queue) == 0
    jobs = _wait_all_finished(svc, [busy.id, *waiting], 120)
    assert [j.status for j in jobs] == ["succeeded"] * 4, [j.error for j in jobs]
    assert [j.attempts for j in jobs] == [1] * 4, "each job ran once, duplicates or not"
    assert all(svc.jobs.get(i).sends >= 2 for i in waiting), "the lost jobs were sent again"
