"""bench/serving_http.py against a fake OpenAI SSE server (tests/serving/fake_openai_server.py) on 127.0.0.1.

The studio's own server is not needed: these prove the client side — SSE parsing, time to
first token, token counts, the concurrency bound, error counting and starting the server
command itself and waiting for /v1/models.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from fake_openai_server import ServerThread  # noqa: E402

from bench.serving_http import free_port, main, percentile, run_level  # noqa: E402

CHATS = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "hello there"}]]


@pytest.fixture
def fake():
    with ServerThread(free_port(), first_delay=0.05, token_delay=0.002) as server:
        yield server


def test_streams_are_parsed_timed_and_bounded(fake):
    level = asyncio.run(run_level(fake.url, ["base", "adapter-1"], CHATS, concurrency=3, requests=7, max_tokens=5))
    assert (level["requests"], level["completed"], level["errors"]) == (7, 7, 0)
    assert [s["tokens"] for s in level["streams"]] == [5] * 7  # the empty role chunk is not a token
    assert {s["model"] for s in level["streams"]} == {"base", "adapter-1"}
    # The first token comes after the server's 50 ms pause, not with the empty role chunk before it.
    assert all(s["ttft"] >= 0.05 and s["ttft"] <= s["seconds"] for s in level["streams"])
    assert 0.05 <= level["ttft_p50_s"] <= level["ttft_p95_s"]
    assert level["tokens"] == 35 and level["tokens_per_s"] == pytest.approx(35 / level["wall_seconds"])
    assert fake.stats["requests"] == 7
    assert fake.stats["max_open"] <= 3  # never more streams than the concurrency bound


def test_usage_counts_are_used_when_sent(fake):
    level = asyncio.run(run_level(fake.url, ["base"], CHATS, concurrency=2, requests=2, max_tokens=4, usage=True))
    assert level["errors"] == 0 and [s["tokens"] for s in level["streams"]] == [4, 4]


def test_errors_are_counted_not_raised(fake):
    level = asyncio.run(
        run_level(fake.url, ["nope", "truncated", "base", "busy"], CHATS, concurrency=4, requests=4, max_tokens=3)
    )
    assert (level["completed"], level["errors"]) == (1, 3)
    errors = {s["model"]: s["error"] for s in level["streams"]}
    assert errors["nope"].startswith("HTTP 404") and "model_not_found" in errors["nope"]
    assert "without data: [DONE]" in errors["truncated"]
    assert errors["busy"].startswith("HTTP 429") and level["rejected_429"] == 1  # a full queue, counted apart
    assert errors["base"] is None
    # Nothing listens on a fresh port: a connection error per request, still counted.
    down = asyncio.run(run_level(f"http://127.0.0.1:{free_port()}", ["base"], CHATS, 2, 2, 3, timeout=5))
    assert down["errors"] == 2 and down["completed"] == 0


def test_percentile_interpolates():
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([float(i) for i in range(101)], 95) == 95.0


def test_main_starts_the_server_waits_for_models_and_stops_it(tmp_path):
    out = tmp_path / "http.json"
    command = "{python} tests/serving/fake_openai_server.py --port {port}"
    result = main(
        ["--serve-command", command, "--concurrency", "2,4", "--requests", "6", "--max-tokens", "3",
         "--model", "all", "--startup-timeout", "60", "--threads", "0", "--out", str(out)]
    )
    assert result["started_server"] and result["models"] == ["base", "adapter-1", "truncated"]
    # One untimed warm-up stream per model first ('truncated' fails there too, and is only counted).
    assert result["warmup_errors"] == 1
    saved = json.loads(out.read_text())
    assert [lv["concurrency"] for lv in saved["levels"]] == [2, 4]
    for level in saved["levels"]:
        # 'all' rotates through the listed models: 2 of every 6 requests go to 'truncated' and fail.
        assert (level["requests"], level["completed"], level["errors"]) == (6, 4, 2)
        assert level["rejected_429"] == 0 and len(level["loadavg_before"]) == len(level["loadavg_after"]) == 3
        # The started server's CPU time over the level is read from /proc (the fake server does use some).
        assert level["server_cpu_seconds"] >= 0
    assert out.with_suffix(".server.log").exists()
    # The server was stopped: its port no longer answers.
    down = asyncio.run(run_level(saved["url"], ["base"], CHATS, 1, 1, 1, timeout=5))
    assert down["errors"] == 1
