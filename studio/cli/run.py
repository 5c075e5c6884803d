"""`studio run`: the studio on this machine — web UI plus (by default) its own worker."""

from __future__ import annotations

import logging
import signal

import click

from studio.settings import load_settings


@click.command()
@click.option("--host", default=None, help="Interface to listen on (default STUDIO_HOST or 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default STUDIO_PORT or 7860).")
@click.option(
    "--worker/--no-worker",
    "with_worker",
    default=None,
    help="Start an embedded worker (default: yes with the embedded broker).",
)
def run(host: str | None, port: int | None, with_worker: bool | None) -> None:
    """Serve the studio at http://HOST:PORT with a live job queue and the bundled model ready."""
    from studio.api.app import serve
    from studio.jobs.outbox import OutboxLoop
    from studio.models.base_models import register_bundled_models, resolve_base_model
    from studio.services.container import build_services
    from workers.supervisor import EmbeddedWorker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in {"host": host, "port": port, "embedded_worker": with_worker}.items() if v is not None}
    settings = load_settings(**overrides)
    svc = build_services(settings, verify_broker=True)
    click.echo(f"registry: {settings.describe()['registry']}")
    click.echo(f"broker:   {settings.describe()['broker']}")
    resolve_base_model(settings.default_base_model, settings, progress=lambda msg: click.echo(f"model:    {msg}"))
    register_bundled_models(svc.registry)
    # Sends jobs submitted while the broker was down, and re-sends those it lost, once it is back.
    outbox = OutboxLoop(svc.registry, svc.jobs.dispatcher, settings.outbox_seconds, settings.resend_after_seconds)
    outbox.start()
    supervisor = EmbeddedWorker(settings) if settings.start_embedded_worker else None
    if supervisor:
        supervisor.start()
        click.echo(f"worker:   embedded worker started (log {supervisor.log_path})")
    else:
        click.echo("worker:   none started here; run `studio worker` on each worker host")
    # `kill` / docker stop send SIGTERM: turn it into the same clean shutdown as Ctrl-C,
    # so the embedded worker is stopped too instead of being orphaned.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    click.echo(f"studio:   http://{settings.host}:{settings.port}")
    click.echo(f"api:      http://{settings.host}:{settings.port}/v1 (OpenAI-compatible)")
    try:
        serve(studio_app(svc), settings.host, settings.port)
    finally:
        outbox.stop()
        if supervisor:
            supervisor.stop()


def studio_app(svc):
    """The UI at / and the OpenAI-compatible API at /v1 as one ASGI app (one port).

    The UI keeps what ``Blocks.launch`` gave it: Gradio's login with the studio's
    sign-in page (STUDIO_AUTH), the theme, stylesheet and favicon, shown errors.
    """
    from app.auth import parse_auth
    from app.login import login_launch_options
    from app.main import build_app
    from app.theme import launch_options
    from studio.api.app import build_server_app

    settings = svc.settings
    demo = build_app(svc)
    demo.queue(default_concurrency_limit=8)
    ui_options = {
        **login_launch_options(parse_auth(settings.auth)),
        **launch_options(),
        "show_error": True,
        "server_name": settings.host,
        "server_port": settings.port,
    }
    return build_server_app(svc, demo, ui_options)


def _raise_keyboard_interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt
