"""`studio federated serve` / `studio federated join`: federated LoRA across real sites on Flower.

:func:`register` adds both commands to the ``studio federated`` group; the logic is in
:mod:`studio.federated.sites`. ``python -m studio.cli.federated_sites serve|join …`` runs them
without the group (the round-trip test starts its processes that way).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

METHODS = ["fedit", "ffa", "flora", "lora_fair"]


def _base(name: str | None) -> tuple[str, Path]:
    """(the name as given or the default bundled base, its local directory)."""
    from studio.models.base_models import resolve_base_model
    from studio.settings import load_settings

    settings = load_settings()
    name = name or settings.default_base_model
    return name, Path(resolve_base_model(name, settings, progress=click.echo).path)


@click.command("serve")
@click.option("--strategy", "method", type=click.Choice(METHODS), default="fedit", show_default=True)
@click.option("--rounds", type=click.IntRange(1, 1000), default=3, show_default=True)
@click.option(
    "--min-clients", type=click.IntRange(1, 1000), default=2, show_default=True, help="Sites each round waits for."
)
@click.option("--port", type=click.IntRange(1, 65535), default=9092, show_default=True, help="The SuperLink's port.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address the SuperLink binds to.")  # noqa: S104
@click.option("--public-host", default=None, help="Host name sites dial (shown in the join command).")
@click.option("--insecure", is_flag=True, help="No TLS (tests, or a network you trust).")
@click.option(
    "--certs", type=click.Path(file_okay=False, path_type=Path), help="Dir with ca.crt, server.pem, server.key."
)
@click.option(
    "--enable-node-auth", is_flag=True, help="Only SuperNodes registered with `flwr supernode register` may join."
)
@click.option("--base", default=None, help="Base model (bundled name, directory or hub id); default: the bundled one.")
@click.option("--local-steps", type=click.IntRange(1, 100_000), default=5, show_default=True)
@click.option("--r", "rank", type=click.IntRange(1, 256), default=4, show_default=True)
@click.option("--lora-alpha", type=float, default=8.0, show_default=True)
@click.option("--learning-rate", type=float, default=1e-2, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 512), default=4, show_default=True)
@click.option("--max-length", type=click.IntRange(16, 32_768), default=128, show_default=True)
@click.option("--target-modules", default="", help="Comma-separated module names; default: the studio's for the base.")
@click.option(
    "--round-timeout", type=float, default=600.0, show_default=True, help="Seconds before a silent site is skipped."
)
@click.option(
    "--join-timeout", type=float, default=600.0, show_default=True, help="Seconds to wait for --min-clients sites."
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Adapter directory (default: the registry's)."
)
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), help="Where the app and logs go.")
@click.option("--register/--no-register", default=True, show_default=True, help="Add the adapter to the registry.")
@click.option("--seed", type=int, default=0, show_default=True)
def serve_cmd(**kw) -> None:
    """Start the server side (Flower SuperLink + the studio's ServerApp), print the join command, run to the end."""
    import uuid

    from studio.federated.sites import Security, ServeOptions, serve

    if kw["insecure"] == bool(kw["certs"]):
        raise click.UsageError("give exactly one of --insecure or --certs DIR")
    base_name, base_path = _base(kw["base"])
    out = kw["out"]
    settings = None
    if out is None and kw["register"]:
        from studio.cli.common import services

        settings = services().settings
        out = Path(settings.adapters_dir) / uuid.uuid4().hex
    options = ServeOptions(
        method=kw["method"], rounds=kw["rounds"], min_clients=kw["min_clients"], host=kw["host"],
        port=kw["port"], public_host=kw["public_host"], base_model=base_name, out_dir=out,
        work_dir=kw["work_dir"], round_timeout=kw["round_timeout"], join_timeout=kw["join_timeout"],
        local_steps=kw["local_steps"], r=kw["rank"], lora_alpha=kw["lora_alpha"],
        learning_rate=kw["learning_rate"], batch_size=kw["batch_size"], max_length=kw["max_length"],
        target_modules=kw["target_modules"], seed=kw["seed"], enable_node_auth=kw["enable_node_auth"],
    )  # fmt: skip
    summary = serve(options, Security(insecure=kw["insecure"], certs_dir=kw["certs"]), base_path, echo=click.echo)
    for rnd, rec in summary["per_round"].items():
        failed = "; ".join(f"node {n}: {why}" for n, why in rec["failed"].items()) or "none"
        click.echo(f"round {rnd}: {len(rec['client_loss'])} site(s) aggregated, failed: {failed}")
    click.echo(f"adapter written to {summary['adapter_dir']}")
    if kw["register"]:
        from studio.cli.common import services
        from studio.federated.sites import register_result

        row = register_result(services().registry, summary, base_name)
        click.echo(f"registered as adapter {row.id}")


@click.command("join")
@click.option("--server", required=True, help="The SuperLink's HOST:PORT (printed by `studio federated serve`).")
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path), help="This site's JSONL.")
@click.option("--base", default=None, help="Base model; must be the server's (default: the bundled one).")
@click.option("--insecure", is_flag=True, help="No TLS (the server must be served with --insecure).")
@click.option("--root-cert", type=click.Path(dir_okay=False, path_type=Path), help="CA certificate of the server.")
@click.option(
    "--auth-key", type=click.Path(dir_okay=False, path_type=Path), help="This site's private key (node auth)."
)
@click.option("--print-only", is_flag=True, help="Print the flower-supernode command instead of running it.")
def join_cmd(server, data, base, insecure, root_cert, auth_key, print_only) -> None:
    """Run this site's Flower SuperNode with the studio's ClientApp; the data file never leaves this machine."""
    import shlex

    from studio.federated.sites import Security, flower_env, supernode_command

    if insecure == bool(root_cert):
        raise click.UsageError("give exactly one of --insecure or --root-cert FILE")
    _, base_path = _base(base)
    argv = supernode_command(
        server, data, base_path, Security(insecure=insecure, root_cert=root_cert), private_key=auth_key
    )
    if print_only:
        click.echo(shlex.join(argv))
        return
    if "FLWR_HOME" not in os.environ:  # Flower installs the app bundle here; keep it with the studio's data
        from studio.settings import load_settings

        os.environ["FLWR_HOME"] = str(Path(load_settings().data_dir) / "flower-site")
    click.echo(f"joining {server} with {data} (it stays here; only LoRA tensors are sent)", err=True)
    # exec: this process becomes the SuperNode, so stopping or killing it stops the site
    os.execve(argv[0], argv, flower_env())


def register(group: click.Group) -> None:
    """Add `serve` and `join` to the `studio federated` group."""
    group.add_command(serve_cmd)
    group.add_command(join_cmd)


@click.group()
def _standalone() -> None:
    """federated across sites (standalone)"""


register(_standalone)

if __name__ == "__main__":
    _standalone()
