"""The ASGI apps: the /v1 API alone, and the server app that puts it next to the UI on one port.

Gradio 6 builds its own FastAPI app in ``Blocks.launch``; to serve /v1 on the same
port, ``studio run`` builds the outer app here instead: ``/v1`` is mounted first
(so Gradio's catch-all mount at ``/`` never sees it, nor its login), then the
Blocks with ``gr.mount_gradio_app`` and the same auth, sign-in page and theme
options ``launch`` took. uvicorn serves the result.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from studio.api.errors import install_handlers
from studio.api.keys import KeyCheck
from studio.api.routes import build_router

API_PREFIX = "/v1"


def build_api_app(services) -> FastAPI:
    """The OpenAI-compatible API of ``services`` (mount it at ``/v1``)."""
    api = FastAPI(title="Adapter Studio OpenAI-compatible API", docs_url="/docs", redoc_url=None)
    install_handlers(api)
    api.include_router(build_router(services, KeyCheck(services.settings)))
    return api


def build_server_app(services, ui: Any = None, ui_options: dict[str, Any] | None = None) -> FastAPI:
    """``/v1`` plus, when given, the Gradio ``ui`` at ``/`` mounted with ``ui_options`` (auth, theme, ...).

    Without a UI (``studio serve``) ``GET /`` answers a small health document.
    """
    root = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    root.mount(API_PREFIX, build_api_app(services))
    if ui is None:

        @root.get("/")
        def health() -> dict[str, str]:
            return {"status": "ok", "api": API_PREFIX}

        return root
    import gradio as gr

    return gr.mount_gradio_app(root, ui, path="/", **(ui_options or {}))


def serve(app: FastAPI, host: str, port: int) -> None:
    """Run ``app`` with uvicorn until Ctrl-C or SIGTERM."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)).run()
