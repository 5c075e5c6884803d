"""A cancelled job in a real browser: its page says where it stopped, not 100 %.

A long system check is queued from the CLI against `studio run`'s data dir (its embedded
worker runs it), watched in the Jobs tab, cancelled with the Cancel button, and its page and
queue row must then say "stopped at step k of N" with k < N.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from e2e.test_studio_browser import REPO, browser, choose, studio_process, wait_text, workspace  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

STEPS = 2000  # 0.05 s each: the job runs for minutes unless cancelled


@pytest.fixture(scope="module")
def studio_url(workspace):  # noqa: F811 - the imported fixture
    with studio_process(workspace) as url:
        yield url


def queue_check_job(root) -> int:
    """`studio jobs check --no-wait` on the studio's data dir; returns the job id."""
    env = {**os.environ, "STUDIO_DATA_DIR": str(root / "data"), "HF_HUB_OFFLINE": "1"}
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "studio", "jobs", "check", "--steps", str(STEPS), "--step-seconds", "0.05", "--no-wait"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return int(re.search(r"queued job (\d+)", done.stdout).group(1))


def test_a_cancelled_job_shows_where_it_stopped(studio_url, browser, workspace):  # noqa: F811 - fixtures
    job_id = queue_check_job(workspace)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(studio_url, wait_until="load")
    page.wait_for_selector("#studio-tabs")
    page.get_by_role("tab", name="Jobs").click()
    choose(page, "jobs-selected", f"#{job_id} ")
    running = wait_text(page, "jobs-detail", f"#{job_id} .*running[\\s\\S]*step \\d+ of {STEPS}", timeout_s=120)
    assert "system check" in running

    page.locator("#jobs-cancel").click()
    detail = wait_text(page, "jobs-detail", f"#{job_id} .*cancelled[\\s\\S]*stopped at step", timeout_s=60)
    stopped = re.search(rf"stopped at step (\d+) of {STEPS} \((\d+)%\)", detail)
    assert stopped, detail
    step = int(stopped.group(1))
    assert 0 < step < STEPS and int(stopped.group(2)) < 100
    row = page.locator(f"#jobs-queue tr[data-job='{job_id}']").inner_text()
    assert f"stopped at {step}/{STEPS}" in row and "100%" not in row
    assert page.locator("#jobs-chart").is_visible()  # a check has a loss curve: its chart stays
    page.close()
