"""`studio serve`: the OpenAI-compatible /v1 API alone (no UI, no worker), for a serving host."""

from __future__ import annotations

import logging

import click

from studio.errors import StudioError
from studio.settings import load_settings

ENGINES = ("studio", "vllm")


@click.command()
@click.option("--host", default=None, help="Interface to listen on (default STUDIO_HOST or 127.0.0.1).")
@click.option("--port", default=8000, show_default=True, type=int, help="Port of the API.")
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="studio",
    show_default=True,
    help="studio: the built-in batched multi-adapter engine (CPU or GPU); vllm: vLLM's server (GPU, studio[vllm]).",
)
def serve(host: str | None, port: int, engine: str) -> None:
    """Serve the base models and adapters of the registry at http://HOST:PORT/v1."""
    from studio.models.base_models import register_bundled_models
    from studio.services.container import build_services

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {"host": host} if host is not None else {}
    settings = load_settings(**overrides, port=port)
    services = build_services(settings)
    register_bundled_models(services.registry)
    if engine == "vllm":
        serve_with_vllm = _vllm_entry()
        # vLLM runs as a child process; its exit status becomes ours so supervisors see a crash.
        status = serve_with_vllm(services, settings.host, port)
        if status:
            raise SystemExit(status)
        return
    from studio.api.app import build_server_app
    from studio.api.app import serve as run_server

    keys = "required" if services.settings.api_key_list() or settings.auth else "not required (set STUDIO_API_KEYS)"
    click.echo(f"api:      http://{settings.host}:{port}/v1 (OpenAI-compatible; keys {keys})")
    run_server(build_server_app(services), settings.host, port)


def _vllm_entry():
    """``studio.serving.vllm_server.serve_with_vllm``, or a StudioError saying what to install."""
    try:
        from studio.serving.vllm_server import serve_with_vllm
    except ModuleNotFoundError as exc:
        if exc.name not in ("studio.serving.vllm_server", "vllm"):
            raise
        raise StudioError(
            "the vLLM engine needs vLLM and a GPU: install the `studio[vllm]` extra on a CUDA host "
            f"(missing: {exc.name}), or use --engine studio"
        ) from None
    return serve_with_vllm
