"""Two trials of one sweep on two real workers at the same time (Redis + PostgreSQL, worker subprocesses).

Three workers: the sweep job holds one, the other two take its trials. ``parallel=2`` keeps two trials
submitted at once; the registry's started/finished times must show them running side by side, on
different workers.
"""

from __future__ import annotations

import pytest
from conftest_training import chat_rows, make_llama_dir, write_jsonl

from studio.schema import Choices, SweepRequest, TrainingHyperParams

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def test_two_workers_run_a_sweeps_trials_at_the_same_time(redis_pg, start_worker, tmp_path):
    svc = redis_pg.services()
    base = make_llama_dir(tmp_path / "tiny-llama")
    dataset = svc.datasets.add(write_jsonl(tmp_path / "chat.jsonl", chat_rows(24)))
    workers = {start_worker(redis_pg).name for _ in range(3)}
    # Long enough (model load + 40 steps + 8 validation passes) that both trials are surely mid-run together.
    hyper = TrainingHyperParams(
        max_steps=40, batch_size=4, max_length=64, validation_fraction=0.25, eval_every=5, log_every=1,
        save_every=1000, precision="fp32",
    )  # fmt: skip
    request = SweepRequest(
        mode="compare",
        dataset_id=dataset.id,
        base_model=str(base),
        space={"variant": Choices(choices=["lora", "dora"])},
        hyper=hyper,
        parallel=2,
        poll_seconds=0.2,
    )
    sweep = svc.jobs.wait(svc.jobs.submit(request).id, timeout=240, poll_seconds=0.5)

    assert sweep.status == "succeeded", sweep.error
    assert sweep.result["trials_complete"] == 2
    trials = svc.jobs.list(kind="train")
    assert len(trials) == 2 and all(t.status == "succeeded" for t in trials), [t.error for t in trials]
    hosts = {t.worker_host for t in trials}
    assert len(hosts) == 2 and sweep.worker_host not in hosts and hosts | {sweep.worker_host} == workers
    first, second = sorted(trials, key=lambda t: t.started_at)
    # Overlap: the second trial started before the first one finished.
    assert second.started_at < first.finished_at, [(t.id, t.started_at, t.finished_at) for t in trials]
