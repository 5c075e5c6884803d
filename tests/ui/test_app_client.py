"""The assembled app launched on a free port and driven through gradio_client (no browser)."""

from __future__ import annotations

import json
import socket

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def launched(services):
    from app.main import build_app
    from app.theme import launch_options

    demo = build_app(services)
    port = free_port()
    demo.queue().launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options()
    )
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_tabs_are_built_from_modules_and_merge_and_evaluate_only_when_installed(monkeypatch):
    from app import main, tab_compose, tab_evaluate, tab_federated, tab_merge, tab_sweep, tab_transfer

    assert tab_merge.available() and tab_evaluate.available() and tab_transfer.available()
    assert tab_compose.available() and tab_federated.available() and tab_sweep.available()
    titles = [
        "Datasets",
        "Train",
        "Jobs",
        "Adapters",
        "Merge",
        "Compose",
        "Playground",
        "Evaluate",
        "Transfer & Generate",
        "Federated",
        "Sweep",
        "System",
    ]
    assert [m.TITLE for m in main.tab_modules()] == titles
    monkeypatch.setattr(tab_evaluate, "available", lambda: False)
    monkeypatch.setattr(tab_merge, "available", lambda: False)
    monkeypatch.setattr(tab_transfer, "available", lambda: False)
    monkeypatch.setattr(tab_federated, "available", lambda: False)
    monkeypatch.setattr(tab_compose, "available", lambda: False)
    monkeypatch.setattr(tab_sweep, "available", lambda: False)
    assert [m.TITLE for m in main.tab_modules()] == ["Datasets", "Train", "Jobs", "Adapters", "Playground", "System"]


def test_page_carries_theme_css_and_inspects_an_upload(launched, services, tmp_path):
    import httpx
    from gradio_client import Client, handle_file

    page = httpx.get(launched, timeout=30)
    assert page.status_code == 200 and "Adapter Studio" in page.text
    config = httpx.get(launched + "config", timeout=30).json()
    assert "variant-cards" in (config.get("css") or "") or "variant-cards" in json.dumps(config)
    elem_ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"ds-upload", "train-submit", "jobs-chart", "adapters-rank-heatmap", "play-send", "merge-submit"} <= elem_ids

    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) for i in range(3)) + "\n")
    client = Client(launched, verbose=False)
    result = client.predict(handle_file(str(path)), api_name="/inspect_file")
    assert any(isinstance(v, str) and "Detected **prompt_completion**" in v for v in result)
    assert services.datasets.list() == []
