"""HTTP load generator for the OpenAI-compatible API (issue 12, item 6 (c)): streaming chat completions.

Posts streaming ``POST /v1/chat/completions`` requests (OpenAI's SSE format: ``data: {json}``
lines whose ``choices[0].delta.content`` carries the text, ending with ``data: [DONE]``) at
each ``--concurrency`` level (default 16 and 64 streams at once, bounded by a semaphore and
the connection pool), and reports per level: p50/p95 time to first token, generated tokens/s
(all streams together, and per stream after its first token), completed requests and errors
(HTTP status other than 200, an ``error`` object in the stream, a stream without
``[DONE]``, a connection failure or a timeout).

Tokens: ``usage.completion_tokens`` when the server sends it (``--usage`` asks for it with
``stream_options.include_usage``), otherwise the number of chunks with non-empty content
(one token per chunk, as servers stream them).

Without ``--url`` it starts ``studio serve --port P`` itself (``--serve-command`` to change
that), waits until ``GET /v1/models`` answers and stops it at the end. ``--model`` names the
model (a base model or an adapter name or id); default the first one ``/v1/models`` lists,
``--model all`` rotates the requests through every listed model.

    python bench/serving_http.py                              # start studio serve, 16 and 64 streams
    python bench/serving_http.py --url http://127.0.0.1:8000 --model my-adapter --requests 128

Writes bench/results/serving_http.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bench.common import RESULTS_DIR, add_data_argument, add_threads_argument, text_table, write_json  # noqa: E402

DEFAULT_SERVE_COMMAND = "{python} -m studio serve --port {port}"


@dataclass
class StreamResult:
    """One streamed request: when its first token came, how many tokens, how long, and the error if any."""

    model: str
    ttft: float | None = None  # seconds from sending to the first non-empty content
    seconds: float = 0.0  # sending to the end of the stream
    tokens: int = 0
    error: str | None = None


async def stream_chat(
    client: Any, url: str, model: str, messages: list[dict[str, str]], max_tokens: int, usage: bool
) -> StreamResult:
    """Send one streaming chat completion and read its SSE stream to ``[DONE]``."""
    result = StreamResult(model=model)
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    if usage:
        body["stream_options"] = {"include_usage": True}
    start = time.perf_counter()
    chunks, reported, done = 0, None, False
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                result.error = f"HTTP {response.status_code}: {text[:200]}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments (": keep-alive"), event names
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    result.error = f"stream error: {json.dumps(event['error'])[:200]}"
                    return result
                if event.get("usage"):
                    reported = event["usage"].get("completion_tokens")
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        chunks += 1
                        if result.ttft is None:
                            result.ttft = time.perf_counter() - start
        if not done:
            result.error = "stream ended without data: [DONE]"
    except Exception as exc:  # connection refused, reset, timeout, bad JSON: all count as errors
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        result.seconds = time.perf_counter() - start
        result.tokens = reported if reported is not None else chunks
    return result


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def run_level(
    url: str,
    models: list[str],
    prompts: list[list[dict[str, str]]],
    concurrency: int,
    requests: int,
    max_tokens: int,
    api_key: str | None = None,
    usage: bool = False,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """``requests`` streams, at most ``concurrency`` at once; the level's summary and every stream's result."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, client: httpx.AsyncClient) -> StreamResult:
        async with gate:
            model = models[i % len(models)]
            return await stream_chat(client, url, model, prompts[i % len(prompts)], max_tokens, usage)

    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=httpx.Timeout(timeout)) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one(i, client) for i in range(requests)))
        wall = time.perf_counter() - start
    return summarise(results, concurrency, wall)


def summarise(results: list[StreamResult], concurrency: int, wall: float) -> dict[str, Any]:
    """p50/p95 time to first token, tokens/s overall and per stream, and the errors of one level."""
    ok = [r for r in results if r.error is None]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    per_stream = [(r.tokens - 1) / (r.seconds - r.ttft) for r in ok if r.ttft is not None and r.tokens > 1
                  and r.seconds > r.ttft]
    errors = [r.error for r in results if r.error is not None]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "completed": len(ok),
        "errors": len(errors),
        # 429 = the server's queue (STUDIO_SERVING_QUEUE) was full: refused at once, not a failure mid-stream.
        "rejected_429": sum(1 for e in errors if e.startswith("HTTP 429")),
        "error_samples": sorted(set(errors))[:5],
        "wall_seconds": wall,
        "tokens": sum(r.tokens for r in ok),
        "tokens_per_s": sum(r.tokens for r in ok) / wall if wall > 0 else None,
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "stream_tokens_per_s_p50": statistics.median(per_stream) if per_stream else None,
        "latency_p50_s": percentile([r.seconds for r in ok], 50),
        "streams": [asdict(r) for r in results],
    }


# --- the server -----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(command: str, port: int, log: Path) -> subprocess.Popen:
    """Start the server command (``{python}`` and ``{port}`` filled in) from the repository root, output to ``log``."""
    argv = [part.format(python=sys.executable, port=port) for part in shlex.split(command)]
    handle = log.open("wb")
    return subprocess.Popen(argv, cwd=common.REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT, env=os.environ.copy())


def wait_ready(url: str, process: subprocess.Popen | None, timeout: float, api_key: str | None = None) -> list[str]:
    """Poll ``GET /v1/models`` until it answers 200 (the model ids) or the server exits or time runs out."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before answering /v1/models")
        try:
            response = httpx.get(f"{url}/v1/models", headers=headers, timeout=5)
            if response.status_code == 200:
                return [m["id"] for m in response.json().get("data", [])]
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}"
        time.sleep(0.5)
    raise RuntimeError(f"{url}/v1/models did not answer within {timeout:.0f} s (last: {last})")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


# --- driver -------------------------------------------------------------------------------------------------------------


def chat_prompts(n: int) -> list[list[dict[str, str]]]:
    """``n`` one-turn chats from the Alpaca instructions of the data folder."""
    rows = common.alpaca_rows("train", n)
    return [
        [{"role": "user", "content": r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")}]
        for r in rows
    ]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="server root, e.g. http://127.0.0.1:8000 (default: start studio serve)")
    parser.add_argument("--model", default=None, help="model id; default the first of /v1/models; 'all' rotates")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[16, 64])
    parser.add_argument("--requests", type=int, default=None, help="requests per level (default 2x its concurrency)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--usage", action="store_true", help="ask for usage in the stream (stream_options)")
    parser.add_argument("--api-key", default=os.environ.get("STUDIO_BENCH_API_KEY"), help="Bearer key, if required")
    parser.add_argument("--serve-command", default=DEFAULT_SERVE_COMMAND, help="started when --url is not given")
    parser.add_argument("--server-pid", type=int, default=None, help="with --url: the server's pid, for its CPU time")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one stream may take")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "serving_http.json")
    add_data_argument(parser)
    add_threads_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    common.prepare_env(threads=args.threads)  # the server started below inherits the thread count
    common.use_data(args.data)
    prompts = chat_prompts(64)
    process, url = None, args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = args.out.with_suffix(".server.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        process = start_server(args.serve_command, port, log)
    url = url.rstrip("/")
    try:
        started = time.perf_counter()
        listed = wait_ready(url, process, args.startup_timeout, args.api_key)
        startup = time.perf_counter() - started
        if args.model == "all":
            models = listed
        elif args.model:
            models = [args.model]
        else:
            models = listed[:1]
        if not models:
            raise SystemExit("error: /v1/models lists no model; pass --model")
        # The server loads a base model on its first request: one untimed stream per model first, so
        # the first level's time to first token is the engine's, not the model load's.
        warm = asyncio.run(run_level(url, models, prompts, len(models), len(models), 2, args.api_key, args.usage,
                                     args.timeout))
        if warm["errors"]:  # measured all the same: every level counts its own errors
            print(f"warning: warm-up errors: {warm['error_samples']}", file=sys.stderr)
        pid = process.pid if process is not None else args.server_pid
        levels = []
        for concurrency in args.concurrency:
            requests = args.requests or 2 * concurrency
            level = measured(pid, lambda c=concurrency, n=requests: asyncio.run(
                run_level(url, models, prompts, c, n, args.max_tokens, args.api_key, args.usage, args.timeout)))
            levels.append(level)
            print(_row_text(level), flush=True)
    finally:
        if process is not None:
            stop_server(process)
    result = {
        "url": url,
        "started_server": process is not None,
        "server_startup_seconds": startup,
        "warmup_seconds": warm["wall_seconds"],
        "warmup_errors": warm["errors"],
        "server_env": {k: os.environ[k] for k in ("STUDIO_SERVING_QUEUE", "STUDIO_SERVING_SLOTS", "OMP_NUM_THREADS")
                       if k in os.environ},
        "models": models,
        "max_tokens": args.max_tokens,
        "machine": common.machine_info(),
        "levels": levels,
    }
    write_json(args.out, result)
    print(text_table(HEADERS, [_row(lv) for lv in levels]))
    print(f"-> {args.out}")
    return result


def measured(pid: int | None, run: Any) -> dict[str, Any]:
    """Run one level, adding the load average before and after and the server's CPU seconds (when its pid is known).

    On a shared machine tokens/s moves with other people's load; tokens per server
    CPU-second moves much less, so both are kept.
    """
    load_before = common.loadavg()
    cpu_before = common.cpu_seconds(pid) if pid else None
    level = run()
    cpu_after = common.cpu_seconds(pid) if pid else None
    level["loadavg_before"], level["loadavg_after"] = load_before, common.loadavg()
    if cpu_before is not None and cpu_after is not None:
        level["server_cpu_seconds"] = cpu_after - cpu_before
        level["tokens_per_server_cpu_s"] = level["tokens"] / level["server_cpu_seconds"] if cpu_after > cpu_before \
            else None
    return level


HEADERS = ["streams", "completed", "errors", "429", "TTFT p50 ms", "TTFT p95 ms", "tokens/s", "per stream tok/s",
           "tok/server CPU-s", "load 1-min"]


def _row(lv: dict[str, Any]) -> list[Any]:
    per_cpu = lv.get("tokens_per_server_cpu_s")
    return [lv["concurrency"], f"{lv['completed']}/{lv['requests']}", lv["errors"], lv.get("rejected_429", 0),
            _ms(lv["ttft_p50_s"]), _ms(lv["ttft_p95_s"]), f"{lv['tokens_per_s']:.1f}" if lv["tokens_per_s"] else "-",
            f"{lv['stream_tokens_per_s_p50']:.1f}" if lv["stream_tokens_per_s_p50"] else "-",
            f"{per_cpu:.1f}" if per_cpu else "-",
            "/".join(f"{x:.1f}" for x in (lv.get("loadavg_before", [None])[:1] + lv.get("loadavg_after", [None])[:1])
                     if x is not None)]


def _row_text(level: dict[str, Any]) -> str:
    return text_table(HEADERS, [_row(level)])


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


if __name__ == "__main__":
    main()
