"""A CLI that never waits silently: it says when no worker is online, and `--inline` runs the job itself."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from conftest_training import chat_rows, make_llama_dir, write_jsonl

from studio.cli import cli
from studio.device import detect_device
from studio.errors import StudioError
from studio.jobs.runner import WorkerIdentity, execute_job
from studio.services.system import workers_serving_queue
from studio.services.waiting import NoWorkerWatch, no_worker_message
from studio.settings import Settings

NOTICE = "no worker is online"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _job(status: str = "queued"):
    return SimpleNamespace(status=status)


def _invoke(args: list[str]):
    from studio.cli.common import services

    services.cache_clear()
    return CliRunner().invoke(cli, args, catch_exceptions=False)


# The watch: plain logic --------------------------------------------------------------------------


def test_watch_tells_once_after_the_grace_period_and_again_when_workers_vanish():
    clock, workers = FakeClock(), {"online": 0}
    watch = NoWorkerWatch(lambda: workers["online"], grace_seconds=2.0, message="nobody", clock=clock)

    assert watch.check(_job()) is None  # first sight: the grace period starts
    clock.now = 1.9
    assert watch.check(_job()) is None
    clock.now = 2.0
    assert watch.check(_job()) == "nobody"
    clock.now = 30.0
    assert watch.check(_job()) is None  # said once, not at every poll

    workers["online"] = 1  # a worker comes: nothing to say
    clock.now = 31.0
    assert watch.check(_job()) is None
    workers["online"] = 0  # ...and goes while the job is still queued: a new grace period, then again
    clock.now = 32.0
    assert watch.check(_job()) is None
    clock.now = 34.0
    assert watch.check(_job()) == "nobody"


def test_watch_is_silent_for_a_job_that_is_not_queued():
    clock = FakeClock()
    watch = NoWorkerWatch(lambda: 0, grace_seconds=0.0, message="nobody", clock=clock)
    for status in ("running", "succeeded", "failed", "cancelled"):
        assert watch.check(_job(status)) is None
    assert watch.check(_job("queued")) == "nobody"


def test_only_live_workers_of_this_queue_count(settings, registry):
    fields = dict(hostname="h", pid=1, device="cpu", device_name="cpu")
    assert workers_serving_queue(registry, settings) == 0
    registry.worker_heartbeat("other-queue", queue="elsewhere", **fields)
    assert workers_serving_queue(registry, settings) == 0
    registry.worker_heartbeat("ours", queue=settings.queue_name, **fields)
    assert workers_serving_queue(registry, settings) == 1
    registry.worker_stopped("ours")
    assert workers_serving_queue(registry, settings) == 0


def test_message_says_how_to_start_a_worker_for_each_broker(settings):
    embedded = no_worker_message(settings, can_inline=True)
    assert "`studio worker`" in embedded and "`studio run`" in embedded and "--inline" in embedded
    assert "--inline" not in no_worker_message(settings, can_inline=False)
    shared = Settings(data_dir=settings.data_dir, broker_url_override="redis://:secret@127.0.0.1:6379/0")
    message = no_worker_message(shared, can_inline=True)
    assert "studio worker" in message and "--inline" not in message and "secret" not in message


# The CLI -------------------------------------------------------------------------------------------


def _studio_env(settings, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STUDIO_", "CELERY_")) and k not in ("DATABASE_URL", "PYTEST_CURRENT_TEST")
    }
    env.update(STUDIO_DATA_DIR=str(settings.data_dir), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", **extra)
    return env


def test_wait_with_no_worker_says_so_and_keeps_waiting(settings, registry):
    process = subprocess.Popen(
        [sys.executable, "-m", "studio", "jobs", "check", "--steps", "2"],
        env=_studio_env(settings, STUDIO_NO_WORKER_GRACE="0.2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    errors: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [errors.put(line) for line in process.stderr], daemon=True).start()
    try:
        seen, deadline = [], time.monotonic() + 120  # bounds the start of a subprocess on a busy machine
        while not any(NOTICE in line for line in seen):
            assert process.poll() is None, f"the command ended instead of waiting: {seen}"
            assert time.monotonic() < deadline, f"no notice on stderr: {seen}"
            with contextlib.suppress(queue.Empty):
                seen.append(errors.get(timeout=1))
        [notice] = [line for line in seen if NOTICE in line]
        assert "`studio worker`" in notice and "--inline" in notice
        assert process.poll() is None  # still waiting: a worker may yet come
        [job] = registry.list_jobs()
        assert job.status == "queued"
        registry.request_cancel(job.id)  # how a user in another terminal ends the wait
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1
    assert f"job {job.id} cancelled" in out
    assert "0.0%" in out  # the progress line was shown while waiting


def test_inline_trains_a_tiny_model_end_to_end(settings, registry, tmp_path):
    base = make_llama_dir(tmp_path / "tiny-llama")
    data = write_jsonl(tmp_path / "colours.jsonl", chat_rows(8))
    hyper = dict(max_steps=2, batch_size=4, max_length=32, validation_fraction=0, log_every=1, save_every=1000)
    args = ["train", "--dataset", str(data), "--base", str(base), "--inline"]
    for key, value in hyper.items():
        args += ["--set", f"{key}={value}"]

    result = _invoke(args)

    assert result.exit_code == 0, result.output
    [job] = registry.list_jobs()
    assert job.status == "succeeded", job.error
    assert job.worker_host.startswith("inline@") and job.step == 2
    adapter = registry.get_adapter(job.result["adapter_id"])
    assert adapter.variant == "lora" and adapter.base_model == str(base)
    assert f"adapter {adapter.id} at" in result.output and "step 2/2" in result.output
    # The queue message is still there: a worker that comes up later must not run the job again.
    late_worker = WorkerIdentity("late-worker", detect_device("cpu"))
    assert execute_job(job.id, registry, settings, late_worker) == "skipped"
    assert registry.get_job(job.id).attempts == 1


def test_inline_check_job_succeeds_without_any_worker(settings, registry):
    result = _invoke(["jobs", "check", "--steps", "3", "--inline"])
    assert result.exit_code == 0, result.output
    assert "job 1 succeeded" in result.output and NOTICE not in result.output
    assert registry.get_job(1).worker_host.startswith("inline@")


@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "check", "--inline"],
        ["train", "--dataset", "1", "--inline"],
        ["eval", "1", "--dataset", "1", "--inline"],
        ["merge", "1", "2", "--inline"],
    ],
)
def test_inline_is_refused_with_a_shared_broker(settings, registry, monkeypatch, args):
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
    with pytest.raises(StudioError, match="--inline needs the embedded broker") as refused:
        _invoke(args)
    assert "start `studio worker` on a worker host" in str(refused.value)
    assert registry.list_jobs() == []  # refused before anything was queued


# The inline runner -------------------------------------------------------------------------------


class NoQueue:
    """A dispatcher with no broker behind it: the job only ever runs inline."""

    def send(self, job_id: int) -> str:
        return f"task-{job_id}"

    def revoke(self, task_id) -> None:
        pass


def _poll(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def test_inline_job_keeps_its_heartbeat_fresh_between_steps(settings, registry):
    from studio.jobs.inline import run_job_inline
    from studio.schema import CheckRequest
    from studio.services.jobs import JobService

    fast_beats = settings.model_copy(update={"heartbeat_seconds": 0.05})
    jobs = JobService(registry, NoQueue())
    job = jobs.submit(CheckRequest(steps=2, step_seconds=3.0))

    def watch(job_id: int):
        # Within one long step no progress is reported, so only the inline heartbeat can move heartbeat_at:
        # that is what keeps a worker's recovery from re-queueing a job that is alive here.
        first = _poll(lambda: (row := registry.get_job(job_id)).step == 1 and row, "step 1")
        later = _poll(lambda: (row := registry.get_job(job_id)).heartbeat_at != first.heartbeat_at and row, "a beat")
        assert later.step == 1 and later.status == "running"
        return jobs.wait(job_id, poll_seconds=0.05)

    assert run_job_inline(job.id, registry, fast_beats, watch).status == "succeeded"


def test_ctrl_c_cancels_the_inline_job_and_returns_once_it_stopped(settings, registry):
    from studio.jobs.inline import run_job_inline
    from studio.schema import CheckRequest
    from studio.services.jobs import JobService

    jobs = JobService(registry, NoQueue())
    job = jobs.submit(CheckRequest(steps=200, step_seconds=0.05))

    def interrupted_wait(job_id: int):
        _poll(lambda: registry.get_job(job_id).step >= 1, "the job to start")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_job_inline(job.id, registry, settings, interrupted_wait)
    row = registry.get_job(job.id)
    assert row.status == "cancelled" and row.step < 200
    assert any("interrupted" in line.message for line in registry.job_logs(job.id))
