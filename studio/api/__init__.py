"""The OpenAI-compatible ``/v1`` API: base models and adapters served by the playground's engine.

``app.py`` builds the ASGI app (mounted at ``/v1`` by ``studio run`` next to the UI,
and alone by ``studio serve``); ``routes.py`` holds the thin endpoints,
``schemas.py`` the request schemas, ``catalog.py`` which ``model`` names what,
``completions.py`` the prompts, limits and the engine calls, ``chunks.py`` the
response bodies, ``keys.py`` the API keys and ``errors.py`` OpenAI's error shape.
"""

from studio.api.app import build_api_app, build_server_app

__all__ = ["build_api_app", "build_server_app"]
