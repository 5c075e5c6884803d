"""Registry semantics that the job system relies on (SQLite; the same code runs on PostgreSQL in integration)."""

from __future__ import annotations

from datetime import timedelta

from models_db.tables import utcnow


def _job(registry, **extra):
    fields = dict(kind="check", request={"kind": "check"}, schema_version=1, seed=0) | extra
    return registry.create_job(**fields)


def test_claim_is_exclusive_and_records_worker(registry):
    job = _job(registry)
    assert registry.claim_job(job.id, "w1", "cpu (x)", {"torch": "1"})
    # a duplicate delivery of the same message must not run the job twice
    assert not registry.claim_job(job.id, "w2", "cpu (x)", {})
    row = registry.get_job(job.id)
    assert (row.status, row.worker_host, row.attempts, row.library_versions) == ("running", "w1", 1, {"torch": "1"})


def test_cancel_queued_job_is_immediate_and_unclaimable(registry):
    job = _job(registry)
    assert registry.request_cancel(job.id) == "cancelled"
    assert not registry.claim_job(job.id, "w1", "cpu", {})
    assert registry.get_job(job.id).status == "cancelled"


def test_cancel_running_job_sets_flag_only(registry):
    job = _job(registry)
    registry.claim_job(job.id, "w1", "cpu", {})
    assert registry.request_cancel(job.id) == "running"
    assert registry.is_cancel_requested(job.id)


def test_finish_does_not_overwrite_a_final_status(registry):
    job = _job(registry)
    registry.request_cancel(job.id)
    registry.finish_job(job.id, "succeeded")
    assert registry.get_job(job.id).status == "cancelled"


def test_metrics_ranks_logs_round_trip_in_order(registry):
    job = _job(registry)
    registry.add_metrics(job.id, 2, {"loss": 1.5, "learning_rate": 1e-4}, elapsed_seconds=3.0)
    registry.add_metrics(job.id, 1, {"loss": 2.0})
    registry.add_rank_snapshots(job.id, 1, {"q": 4, "v": 2}, {"q": {"importance": 0.5}})
    registry.add_job_log(job.id, "hello")
    assert [(m.step, m.value) for m in registry.metrics(job.id, ["loss"])] == [(1, 2.0), (2, 1.5)]
    snaps = registry.rank_snapshots(job.id)
    assert {(s.module, s.rank) for s in snaps} == {("q", 4), ("v", 2)}
    assert next(s.extra for s in snaps if s.module == "q") == {"importance": 0.5}
    assert [line.message for line in registry.job_logs(job.id)] == ["hello"]
    registry.delete_metrics_after(job.id, 1)
    assert [m.step for m in registry.metrics(job.id)] == [1]


def test_orphans_are_found_by_dead_worker_or_stale_heartbeat(registry):
    fresh, dead_worker, stale = _job(registry), _job(registry), _job(registry)
    for job, worker in ((fresh, "alive"), (dead_worker, "gone"), (stale, "alive")):
        registry.claim_job(job.id, worker, "cpu", {})
    cutoff = utcnow() - timedelta(seconds=60)
    assert {j.id for j in registry.orphaned_jobs(["gone"], cutoff)} == {dead_worker.id}
    future_cutoff = utcnow() + timedelta(seconds=1)
    assert {j.id for j in registry.orphaned_jobs([], future_cutoff)} == {fresh.id, dead_worker.id, stale.id}


def test_workers_online_and_stopped(registry):
    fields = dict(hostname="h", pid=1, device="cpu", device_name="CPU", queue="studio")
    registry.worker_started("w1", **fields)
    registry.worker_started("w2", **fields)
    registry.worker_stopped("w2")
    online = registry.online_workers(utcnow() - timedelta(seconds=30))
    assert [w.name for w in online] == ["w1"]
    assert registry.online_workers(utcnow() + timedelta(seconds=5)) == []


def test_timestamps_come_back_timezone_aware(registry):
    job = _job(registry)
    assert registry.get_job(job.id).created_at.tzinfo is not None
