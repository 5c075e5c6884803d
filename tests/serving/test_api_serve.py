"""Where /v1 is served: next to the UI by `studio run` (one port, login kept) and alone by `studio serve`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import ModuleType

import httpx
import pytest
from api_support import free_port, make_services, running
from click.testing import CliRunner

from studio.cli import COMMANDS, cli
from studio.errors import StudioError


@pytest.mark.slow  # builds the whole UI (gradio import and every tab): 10-30 s on a busy machine
def test_studio_run_app_serves_the_ui_and_v1_on_one_port_with_the_login_kept(settings, registry, monkeypatch):
    from studio.cli.run import studio_app

    monkeypatch.setenv("STUDIO_AUTH", "alice:pw")
    services = make_services(settings.model_copy(update={"auth": "alice:pw", "api_keys": "key-1"}), registry)
    try:
        with running(studio_app(services)) as url, httpx.Client(base_url=url, timeout=30) as client:
            root = client.get("/")
            assert root.status_code == 303 and root.headers["location"] == "sign-in"  # the studio's sign-in page
            assert "Adapter Studio" in client.get("/sign-in").text
            signed_in = client.post("/sign-in", data={"username": "alice", "password": "pw"})
            assert signed_in.status_code == 303
            page = client.get("/")
            assert page.status_code == 200 and "gradio" in page.text.lower()
            # /v1 is not behind the UI login but behind API keys; a browser session is not a key.
            assert client.get("/v1/models").status_code == 401
            models = client.get("/v1/models", headers={"Authorization": "Bearer key-1"})
            assert models.status_code == 200 and models.json()["object"] == "list"
    finally:
        services.playground.schedulers.close()


@pytest.mark.slow
def test_studio_run_app_without_login(settings, registry):
    from studio.cli.run import studio_app

    services = make_services(settings, registry)
    with running(studio_app(services)) as url:
        assert httpx.get(f"{url}/", timeout=30).status_code == 200
        assert httpx.get(f"{url}/config", timeout=30).status_code == 200  # Gradio's own routes still answer
        ids = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
        assert settings.default_base_model in ids


def test_serve_is_a_studio_command():
    assert COMMANDS["serve"] == "studio.cli.serve:serve"
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0 and "--engine [studio|vllm]" in result.output and "--port" in result.output
    bad = CliRunner().invoke(cli, ["serve", "--engine", "tgi"])
    assert bad.exit_code == 2 and "tgi" in bad.output


def test_serve_runs_the_api_on_the_given_host_and_port(settings, monkeypatch):
    import studio.api.app as api_app

    calls = []
    monkeypatch.setattr(api_app, "serve", lambda app, host, port: calls.append((app, host, port)))
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--port", "8123"])
    assert result.exit_code == 0, result.output
    app, host, port = calls[0]
    assert (host, port) == ("0.0.0.0", 8123) and any(getattr(r, "path", "") == "/v1" for r in app.routes)


def test_serve_with_vllm_says_what_is_missing(settings, monkeypatch):
    monkeypatch.setitem(sys.modules, "studio.serving.vllm_server", None)  # as if the module were not installed
    result = CliRunner().invoke(cli, ["serve", "--engine", "vllm"])
    assert isinstance(result.exception, StudioError) and "the vLLM engine needs" in str(result.exception)


def test_serve_with_vllm_hands_over_services_host_and_port(settings, monkeypatch):
    calls = []
    fake = ModuleType("studio.serving.vllm_server")
    fake.serve_with_vllm = lambda services, host, port: calls.append((services, host, port))
    monkeypatch.setitem(sys.modules, "studio.serving.vllm_server", fake)
    result = CliRunner().invoke(cli, ["serve", "--engine", "vllm", "--port", "9000"])
    assert result.exit_code == 0, result.output
    services, host, port = calls[0]
    assert (host, port) == ("127.0.0.1", 9000) and services.settings.data_dir == settings.data_dir


@pytest.mark.slow
def test_studio_serve_for_real(settings, tmp_path):
    port = free_port()
    env = {**os.environ, "STUDIO_DATA_DIR": str(settings.data_dir), "STUDIO_API_KEYS": "real-key"}
    env.pop("STUDIO_AUTH", None)
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "studio", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer real-key"})
        assert settings.default_base_model in [m["id"] for m in models.json()["data"]]
        assert "real-key" not in log.read_text()  # keys are never logged
    finally:
        process.terminate()
        process.wait(20)


@pytest.mark.slow
def test_gradio_events_run_through_the_mounted_ui(settings, registry):
    """The Blocks' queue starts under the outer app (mount_gradio_app's lifespan), so events are answered."""
    import gradio as gr
    from gradio_client import Client

    from studio.api.app import build_server_app

    with gr.Blocks() as demo:
        text, out = gr.Textbox(), gr.Textbox()
        gr.Button("go").click(lambda value: value.upper(), text, out, api_name="up")
    demo.queue()
    with running(build_server_app(make_services(settings, registry), demo, {})) as url:
        assert Client(f"{url}/", verbose=False).predict("hi", api_name="/up") == "HI"
