"""`studio run` end to end: the page is served, the embedded worker runs jobs and stops with it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import httpx
import pytest

from models_db.registry import Registry

from .helpers import clean_environment, free_port, kill_group, pid_alive, run_studio, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_studio_run_serves_runs_jobs_and_stops_its_worker(tmp_path, shared_models_dir):
    data_dir, port = tmp_path / "data", free_port()
    # Embedded defaults: no DATABASE_URL or CELERY_BROKER_URL at all.
    env = clean_environment(
        STUDIO_DATA_DIR=str(data_dir),
        STUDIO_PORT=str(port),
        STUDIO_MODELS_DIR=str(shared_models_dir),
        STUDIO_HEARTBEAT_SECONDS="0.5",
    )
    log_path = tmp_path / "studio-run.log"
    with open(log_path, "w") as log:
        studio = subprocess.Popen(
            [sys.executable, "-m", "studio", "run"],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker_pid = None
    try:

        def page() -> bool:
            if studio.poll() is not None:
                pytest.fail(f"`studio run` exited with {studio.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        # The first run converts the bundled GGUF model (about 20 s) before serving.
        wait_for(page, 150, lambda: f"the studio page; log:\n{log_path.read_text()[-3000:]}", 0.5)
        registry = Registry.from_url(f"sqlite:///{data_dir / 'studio.db'}", migrate=False)
        try:
            worker = wait_for(
                lambda: next((w for w in registry.list_workers() if not w.stopped), None),
                60,
                lambda: f"the embedded worker; its log:\n{_worker_log(data_dir)}",
            )
            worker_pid = worker.pid

            status = run_studio(["status", "--json"], env)
            assert status.returncode == 0, status.stderr
            state = json.loads(status.stdout)
            assert [w["name"] for w in state["workers"]] == [worker.name]
            assert "smollm2-135m-instruct" in [m["name"] for m in state["base_models"]]

            check = run_studio(["status", "--check"], env)
            assert check.returncode == 0, check.stdout + check.stderr
            assert "succeeded" in check.stdout and worker.name in check.stdout

            studio.send_signal(signal.SIGTERM)  # what `docker stop` and `kill` send
            studio.wait(60)
            wait_for(lambda: not pid_alive(worker_pid), 15, f"embedded worker {worker_pid} to exit")
            assert [w.stopped for w in registry.list_workers()] == [True]
        finally:
            registry.dispose()
    finally:
        kill_group(studio)
        if worker_pid and pid_alive(worker_pid):
            with contextlib.suppress(ProcessLookupError):  # the supervisor starts it in its own session
                os.killpg(worker_pid, signal.SIGKILL)


def _worker_log(data_dir) -> str:
    path = data_dir / "logs" / "worker.log"
    return path.read_text()[-3000:] if path.exists() else "(no worker log)"
