"""The /v1 endpoints: thin wrappers that resolve, submit to the shared engine and shape the answer.

A streamed reply waits for its first update before answering, so errors found by
the engine (an adapter it cannot serve) are still proper HTTP errors; after that
every update is one SSE chunk. A client that disconnects mid-stream cancels its
request: the stream is cancelled by the server and its background task calls
``handle.cancel()``, which frees the request's batch row and adapter slot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
from fastapi import APIRouter, Depends, Header
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from studio.api.catalog import Catalog
from studio.api.chunks import DONE, Reply, sse
from studio.api.completions import Completions, Prepared, finish_reason
from studio.api.errors import ApiError, from_studio_error, model_not_found
from studio.api.keys import KeyCheck
from studio.api.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from studio.errors import StudioError
from studio.serving.scheduler import RequestHandle, Update

STREAM_THREADS = 512  # streams waiting for their next update at once (threads blocked on a queue, not CPU)


def _next(updates: Iterator[Update]) -> Update | None:
    return next(updates, None)


def build_router(services, keys: KeyCheck) -> APIRouter:
    """The router of ``/v1`` for ``services`` (whose playground engine it shares)."""
    catalog = Catalog(services.registry, services.settings)
    completions = Completions(services.playground, catalog)
    limiter: list[anyio.CapacityLimiter] = []  # made in the server's event loop, on first use

    def authorize(authorization: str | None = Header(None)) -> None:
        keys.check(authorization)

    router = APIRouter(dependencies=[Depends(authorize)])

    async def wait_next(updates: Iterator[Update]) -> Update | None:
        if not limiter:
            limiter.append(anyio.CapacityLimiter(STREAM_THREADS))
        # abandon_on_cancel: a disconnect must not wait for the next token; the thread ends at the cancel.
        return await anyio.to_thread.run_sync(_next, updates, abandon_on_cancel=True, limiter=limiter[0])

    @router.get("/models")
    def list_models() -> dict:
        """Every base model and adapter served here."""
        return {"object": "list", "data": catalog.list()}

    @router.get("/models/{model:path}")
    def retrieve_model(model: str) -> dict:
        for entry in catalog.list():
            if entry["id"] == model:
                return entry
        raise model_not_found(model)

    @router.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        prepared = await run_in_threadpool(completions.prepare_chat, body)
        return await respond(prepared, body, Reply(body.model, chat=True, include_usage=body.include_usage))

    @router.post("/completions")
    async def text_completions(body: CompletionRequest):
        prepared = await run_in_threadpool(completions.prepare_completion, body)
        return await respond(prepared, body, Reply(body.model, chat=False, include_usage=body.include_usage))

    async def respond(prepared: Prepared, body: SamplingFields, reply: Reply):
        handle = prepared.submit()
        try:
            if not body.stream:
                result = await run_in_threadpool(handle.result)
                return JSONResponse(
                    reply.whole(
                        result.text, finish_reason(result.finish_reason), prepared.prompt_tokens, len(result.token_ids)
                    )
                )
            updates = handle.updates()
            first = await wait_next(updates)
        except BaseException:
            handle.cancel()
            raise
        return StreamingResponse(
            stream(handle, updates, first, prepared, body, reply),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=BackgroundTask(handle.cancel),  # runs after the end and after a disconnect alike
        )

    async def stream(
        handle: RequestHandle,
        updates: Iterator[Update],
        update: Update | None,
        prepared: Prepared,
        body: SamplingFields,
        reply: Reply,
    ) -> AsyncIterator[str]:
        text, tokens, reason, started = "", 0, None, False
        try:
            while update is not None:
                # The scheduler's deltas, made safe: only text that extends what was sent goes out.
                delta = update.text[len(text) :] if update.text.startswith(text) else ""
                text += delta
                tokens = update.tokens
                if delta or (reply.chat and not started):
                    yield sse(reply.chunk(delta, first=not started))
                    started = True
                if update.finish_reason is not None:
                    reason = update.finish_reason
                    break
                update = await wait_next(updates)
        except StudioError as exc:  # the status line is sent already: the error goes in the stream
            error = from_studio_error(exc)
            yield sse({"error": {"message": error.message, "type": error.type, "param": None, "code": error.code}})
            return
        finally:
            handle.cancel()  # no-op when it finished; frees the row when the client went away
        yield sse(reply.chunk(None if reply.chat else "", finish_reason(reason)))
        if body.include_usage:
            yield sse(reply.usage_chunk(prepared.prompt_tokens, tokens))
        yield DONE

    return router


__all__ = ["ApiError", "build_router"]
