"""Sweep tab: a sweep submitted where too few workers serve the queue runs its trials inside itself.

The sweep job holds one worker; under `studio run` (one embedded worker) a trial queued for "the
other workers" waited forever and the sweep with it.
"""

from __future__ import annotations

import json

import pytest

from app import tab_sweep

HYPER = {"max_steps": 4, "validation_fraction": 0.2}
WORKER = dict(hostname="h", pid=1, device="cpu", device_name="cpu")


@pytest.fixture
def request_of(services, tmp_path):
    """A checked sweep request of ``parallel`` trials at a time on a small dataset."""
    from studio.services.datasets import DatasetService

    rows = [{"instruction": f"what color is item {i}", "output": f"colour {i % 3}"} for i in range(20)]
    path = tmp_path / "colours.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    dataset = DatasetService(services.registry, services.settings).add(path)
    table = [[True, *row[1:]] if row[1] == "variant.r" else row for row in tab_sweep.space_rows("lora")]

    def make(parallel: int):
        return tab_sweep.make_request(dataset.id, "tiny", "lora", table, {"parallel": parallel}, HYPER)

    return make


def add_workers(services, count: int) -> None:
    """``count`` live workers on this studio's queue."""
    for i in range(count):
        services.registry.worker_heartbeat(f"w{i}", queue=services.settings.queue_name, **WORKER)


def test_with_one_worker_the_trials_run_inside_the_sweep(services, request_of):
    add_workers(services, 1)  # studio run: the embedded worker, which the sweep itself will hold
    line = tab_sweep.submit(services, request_of(1), "token-1")
    job = services.jobs.list(kind="sweep")[0]
    assert job.request["trials_on"] == "here"
    assert "inside the sweep's own worker" in line and "start one more worker" not in line


def test_with_a_free_worker_per_trial_the_trials_are_queued(services, request_of):
    add_workers(services, 3)  # the sweep's worker and two for its two trials at a time
    line = tab_sweep.submit(services, request_of(2), "token-2")
    assert services.jobs.list(kind="sweep")[0].request["trials_on"] == "workers"
    assert "on the other workers" in line
    assert tab_sweep.trials_on(services, 3) == "here"  # three at a time would leave one trial waiting
