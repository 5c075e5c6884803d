"""The whole studio in a real browser: `studio run` (embedded broker + worker) driven by Chromium.

Upload a dataset -> Quick training of a tiny local Llama -> the job succeeds and its loss
chart is drawn -> chat with the base and the adapter side by side -> download the adapter
zip (one click) and load it with PEFT, download the merged model -> resize it to rank 2 with
a merge job. Then a cancelled job: its page says where it stopped, not 100 % (the two tests
share one `studio run`: its start-up is most of a test's time). Needs Debian's Chromium
(scripts/ensure_chromium.sh installs it); a missing browser fails the test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from ui.tiny_model import save_tiny_llama

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
COLORS = {"sky": "blue", "grass": "green", "sun": "yellow", "snow": "white", "fire": "red", "night": "black"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    save_tiny_llama(root / "tiny-llama")
    rows = [{"instruction": f"what color is the {thing}?", "output": color} for thing, color in COLORS.items()] * 4
    (root / "colors.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def studio_url(workspace):
    """`studio run` on a fresh data dir and a free port; stopped (SIGTERM, like Ctrl-C) afterwards."""
    with studio_process(workspace) as url:
        yield url


@contextlib.contextmanager
def studio_process(workspace: Path, **extra_env: str):
    """Run `studio run` with the test environment plus ``extra_env``; yields its URL once it answers."""
    port = free_port()
    env = {
        **os.environ,
        "STUDIO_DATA_DIR": str(workspace / "data"),
        "STUDIO_HOST": "127.0.0.1",
        "STUDIO_PORT": str(port),
        # The tiny model is the default base too, so startup converts no bundled GGUF.
        "STUDIO_DEFAULT_BASE_MODEL": str(workspace / "tiny-llama"),
        "STUDIO_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "STUDIO_AUTH", "STUDIO_EMBEDDED_WORKER"):
        env.pop(name, None)
    env.update(extra_env)
    log_path = workspace / f"studio-{port}.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        [sys.executable, "-m", "studio", "run"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"studio run exited early:\n{log_path.read_text()[-3000:]}")
            try:
                # 200, or a redirect to the sign-in page when STUDIO_AUTH is set.
                if httpx.get(url, timeout=2).status_code in (200, 303):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"studio run did not answer in 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure_chromium.sh (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def choose(page, elem_id: str, option: str) -> None:
    """Pick the option of a Gradio dropdown whose label contains ``option``."""
    page.locator(f"#{elem_id} input").click()
    page.locator("[role=option]").filter(has_text=option).first.click()


def wait_text(page, elem_id: str, pattern: str, timeout_s: float = 60) -> str:
    """Wait until the element's text matches ``pattern`` (a JS regex); returns the text."""
    page.wait_for_function(
        "([id, pattern]) => new RegExp(pattern).test(document.getElementById(id)?.innerText || '')",
        arg=[elem_id, pattern],
        timeout=timeout_s * 1000,
    )
    return page.locator(f"#{elem_id}").inner_text()


def bot_replies(page, elem_id: str) -> list[str]:
    return page.locator(f"#{elem_id} .bot-row").all_inner_texts()


def test_upload_train_chat_download(studio_url, browser, workspace, tmp_path):
    tiny = str(workspace / "tiny-llama")
    page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(studio_url, wait_until="load")
    page.wait_for_selector("#studio-tabs")

    # Datasets: upload, see the detected format, import.
    page.locator("#ds-upload input[type=file]").set_input_files(str(workspace / "colors.jsonl"))
    detected = wait_text(page, "ds-detected", "Detected")
    assert "alpaca" in detected and "24 rows" in detected
    page.locator("#ds-import").click()
    wait_text(page, "ds-list", "colors")

    # Train: the dataset, the tiny model typed as a local directory, the Quick preset (the default).
    page.get_by_role("tab", name="Train").click()
    choose(page, "train-dataset", "colors")
    page.locator("#train-base-custom textarea, #train-base-custom input").first.fill(tiny)
    # Measured on this machine (main's estimates), or a rough guess: either way it counts the steps.
    assert re.search(r"\d+ steps", wait_text(page, "train-estimate", "steps"))
    page.locator("#train-submit").click()
    job_line = wait_text(page, "train-status", "Queued training job #\\d+")
    job_id = re.search(r"#(\d+)", job_line).group(1)

    # Jobs: the job reaches succeeded; its loss chart has curves.
    page.get_by_role("tab", name="Jobs").click()
    detail = wait_text(page, "jobs-detail", f"#{job_id} .*(succeeded|failed|cancelled)", timeout_s=300)
    assert "succeeded" in detail, detail + "\n" + page.locator("#jobs-logs textarea").input_value()
    adapter_id = re.search(r"Adapter #(\d+)", detail).group(1)
    page.wait_for_function(
        "() => (document.querySelector('#jobs-chart .js-plotly-plot')?.data || []).length > 0", timeout=30_000
    )
    curves = page.evaluate("() => document.querySelector('#jobs-chart .js-plotly-plot').data.map(t => t.name)")
    assert "training loss" in curves

    # Playground: base and adapter side by side, one prompt, replies streamed into both.
    page.get_by_role("tab", name="Playground").click()
    choose(page, "play-base", tiny)
    page.wait_for_function(
        "() => /#\\d+/.test(document.querySelector('#play-target-1 input')?.value || '')", timeout=30_000
    )
    assert "no adapter" in page.locator("#play-target-0 input").input_value()
    page.locator("#play-prompt textarea").fill("what color is the sky?")
    page.locator("#play-send").click()
    # Both panes have answered once the Send button's event is over (the panes answer in turn).
    page.wait_for_function(
        "() => [0, 1].every(i => { const r = document.querySelectorAll(`#play-chat-${i} .bot-row`);"
        " return r.length === 1 && r[0].innerText.trim() && r[0].innerText.trim() !== '…'; })",
        timeout=120_000,
    )
    replies = [bot_replies(page, f"play-chat-{i}")[0] for i in (0, 1)]
    assert all(reply.strip() for reply in replies)

    # Adapters: select it, download the zip, load it with PEFT.
    page.get_by_role("tab", name="Adapters").click()
    wait_text(page, "adapters-table", "lora")
    choose(page, "adapters-selected", f"#{adapter_id} ")
    wait_text(page, "adapters-details", "trainable parameters")
    # One click on the download button delivers the zip; its SHA-256 is shown beside the button.
    page.wait_for_selector("#adapters-zip-btn:not([disabled])", timeout=60_000)
    with page.expect_download() as download:
        page.locator("#adapters-zip-btn").click()
    zipped = tmp_path / "adapter.zip"
    download.value.save_as(zipped)
    assert download.value.suggested_filename == f"adapter-{adapter_id}.zip"
    assert hashlib.sha256(zipped.read_bytes()).hexdigest() in page.locator("#adapters-zip-sha256").inner_text()
    # The merged model is made on the click, then the browser fetches it with no second click.
    with page.expect_download(timeout=120_000) as merged:
        page.locator("#adapters-merged-btn").click()
    assert merged.value.suggested_filename == f"merged-model-{adapter_id}.zip"
    merged_zip = tmp_path / "merged.zip"
    merged.value.save_as(merged_zip)
    wait_text(page, "adapters-model-sha256", hashlib.sha256(merged_zip.read_bytes()).hexdigest())

    # Merge: resize the adapter to rank 2 by a merge job run on the studio's own worker.
    page.get_by_role("tab", name="Merge").click()
    choose(page, "merge-adapters", f"#{adapter_id} ")
    page.keyboard.press("Escape")
    page.locator("#merge-rank input").fill("2")
    page.locator("#merge-submit").click()
    merge_line = wait_text(page, "merge-status", "Queued merge job #\\d+")
    merge_job = re.search(r"#(\d+)", merge_line).group(1)
    results = wait_text(page, "merge-results", f"{merge_job}\\s+succeeded", timeout_s=120)
    assert f"#{adapter_id}" in results and "linear" in results
    page.close()

    out = tmp_path / "adapter"
    with zipfile.ZipFile(zipped) as archive:
        archive.extractall(out)
    config = next(out.rglob("adapter_config.json"))
    assert json.loads(config.read_text())["base_model_name_or_path"] == "tiny-llama"  # its folder, not a path
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), config.parent)
    assert any("lora_A" in name for name, _ in model.named_parameters())


# -- a cancelled job, on the same `studio run` ------------------------------------------------------------------
# A long system check is queued from the CLI against `studio run`'s data dir (its embedded worker runs it),
# watched in the Jobs tab, cancelled with the Cancel button, and its page and queue row must then say
# "stopped at step k of N" with k < N.

STEPS = 2000  # 0.05 s each: the job runs for minutes unless cancelled


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


def test_a_cancelled_job_shows_where_it_stopped(studio_url, browser, workspace):
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
