"""A tiny stand-in for the studio's OpenAI-compatible server, to test bench/serving_http.py without a model.

Speaks the same wire format as ``/v1``: ``GET /v1/models`` and streaming ``POST
/v1/chat/completions`` (SSE ``data: {json}`` chunks, ``choices[0].delta.content``, then
``data: [DONE]``), one chunk per "token" after ``token_delay`` seconds. Models: ``base``
and ``adapter-1`` answer; ``truncated`` ends its stream without ``[DONE]``; ``busy`` (not
listed) gets the 429 of a full queue; any other name gets OpenAI's 404 error. ``stats`` counts requests and the most streams open at once.

Run standalone (what the load generator's --serve-command starts in the tests):
``python tests/serving/fake_openai_server.py --port P``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from typing import Any

MODELS = ["base", "adapter-1", "truncated"]


def make_app(first_delay: float = 0.02, token_delay: float = 0.002) -> tuple[Any, dict[str, int]]:
    """The starlette app and its live counters (requests, open streams, the most open at once)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    stats = {"requests": 0, "open": 0, "max_open": 0}

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]})

    async def chat(request: Request) -> Any:
        body = await request.json()
        stats["requests"] += 1
        if body["model"] == "busy":
            error = {"message": "queue full", "type": "server_error", "code": "queue_full"}
            return JSONResponse({"error": error}, status_code=429)
        if body["model"] not in MODELS:
            error = {"message": f"model {body['model']} not found", "type": "invalid_request_error",
                     "code": "model_not_found"}
            return JSONResponse({"error": error}, status_code=404)
        n = int(body.get("max_tokens") or 16)

        def chunk(delta: dict[str, str], finish: str | None = None, **extra: Any) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            event = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": body["model"],
                     "choices": [choice], **extra}
            return f"data: {json.dumps(event)}\n\n"

        async def events():
            stats["open"] += 1
            stats["max_open"] = max(stats["max_open"], stats["open"])
            try:
                yield chunk({"role": "assistant", "content": ""})  # no text yet: not the first token
                await asyncio.sleep(first_delay)
                for i in range(n):
                    if i:
                        await asyncio.sleep(token_delay)
                    yield chunk({"content": f"t{i} "})
                yield chunk({}, finish="length")
                if (body.get("stream_options") or {}).get("include_usage"):
                    usage = {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}
                    yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
                if body["model"] != "truncated":
                    yield "data: [DONE]\n\n"
            finally:
                stats["open"] -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

    routes = [Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])]
    return Starlette(routes=routes), stats


class ServerThread:
    """The fake app served by uvicorn on 127.0.0.1 in a daemon thread (real sockets, real streaming)."""

    def __init__(self, port: int, **delays: float):
        import uvicorn

        self.app, self.stats = make_app(**delays)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self._thread.join(10)


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    app, _ = make_app()
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, log_level="warning")
