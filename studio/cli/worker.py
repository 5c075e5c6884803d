"""`studio worker`: a Celery worker for this studio's queue (run one per GPU host)."""

from __future__ import annotations

import click

from studio.settings import load_settings


@click.command()
@click.option("--name", default=None, help="Worker name shown in the studio (default: this host's name).")
@click.option("--loglevel", default="INFO", show_default=True, help="Celery log level.")
@click.option(
    "--join-distributed",
    "join_endpoint",
    default=None,
    metavar="HOST:PORT",
    help="Instead of taking jobs from the queue, be one of the other hosts of training jobs over several hosts "
    "(hyper.nodes > 1): wait at the rendezvous HOST:PORT that node 0's worker opens (its STUDIO_RDZV_HOST and "
    "STUDIO_RDZV_PORT) and run this host's ranks of each job there. Needs no database or broker.",
)
def worker(name: str | None, loglevel: str, join_endpoint: str | None) -> None:
    """Run a worker that executes training, merging and evaluation jobs."""
    settings = load_settings()
    settings.ensure_dirs()
    if join_endpoint is not None:
        from studio.training.multinode import join_distributed

        join_distributed(settings, join_endpoint, log=lambda line: click.echo(line, err=True))
        return

    from models_db.registry import Registry
    from studio.services.system import check_broker

    # Fail fast, in one line, before Celery prints pages of retries.
    Registry.from_url(settings.database_url).dispose()
    check_broker(settings.broker_url)

    from workers.celery_app import app

    nodename = name or settings.worker_name
    if "@" not in nodename:
        nodename = f"studio@{nodename}"
    argv = [
        "worker",
        "--pool=solo",  # one job at a time per process; the GPU/CPU is the bottleneck anyway
        "--concurrency=1",
        f"--hostname={nodename}",
        f"--queues={settings.queue_name}",
        f"--loglevel={loglevel}",
        # Gossip, mingle and Celery's own heartbeats need a broadcast channel the
        # embedded transport lacks; liveness is tracked in the registry instead.
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    app.worker_main(argv)
