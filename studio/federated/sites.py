"""Federated LoRA across real sites on Flower's deployment runtime (issue #14, "across sites" mode).

How it runs (flwr 1.42). Flower deploys an *app* — a directory whose ``pyproject.toml`` names a
ServerApp and a ClientApp — onto a **SuperLink** (the server, one HTTP port for the Fleet,
Control and runtime APIs) and the **SuperNodes** (one per site) that connect to it:

- ``studio federated serve`` (:func:`serve`) writes that app directory (its components are
  ``server_app`` and ``client_app`` of :mod:`studio.federated.site_apps`, which every site already has installed,
  so the app bundle (FAB) is just the ``pyproject.toml``: nothing is installed at run time —
  the SuperLink runs with ``--disable-runtime-dependency-installation``), starts
  ``flower-superlink``, prints the join command, submits the run with ``flwr run`` to the
  SuperLink's Control API (Flower's supported way to start a run on a deployment; the connection is
  written to a private ``FLWR_HOME``), waits for it, stops the SuperLink and registers the adapter.
- ``studio federated join`` (:func:`supernode_command`) *becomes* ``flower-supernode`` (exec), with
  ``--node-config 'data-path="…" base-model="…"'``: the data file and the base model are read on
  the site by the ClientApp, and only LoRA tensors (plus row count and loss) go back.

The SuperLink starts the ServerApp (:func:`studio.federated.site_apps.run_server`) in a subprocess of its own; it waits for
``min-clients`` sites, runs :class:`~studio.federated.flower_app.LoraStrategy` through Flower's
``Strategy.start`` with a per-round timeout, exports the global adapter as a plain PEFT LoRA
into ``out-dir`` and writes ``federation.json`` (per round: sampled nodes, losses, rows, bytes,
failures) next to it, which :func:`serve` reads back.

A site that dies mid-round: its SuperNode stops sending heartbeats and Flower answers its
message with a "node unavailable" error once it is offline (2 × 30 s heartbeats), or the round's
``round-timeout`` passes first; either way the strategy skips it, records it under ``failed``
and aggregates the others. The server does not hold data, so it reports the clients' local
training loss per round, not a validation loss.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import StudioError

APP_NAME = "studio-federated"
CONNECTION = "studio"  # the SuperLink connection written to serve's private FLWR_HOME
RESULT_FILE = "federation.json"

# Run config of the served app (Flower's [tool.flwr.app.config]); serve writes the actual values.
RUN_CONFIG_DEFAULTS: dict[str, Any] = {
    "method": "fedit",
    "num-server-rounds": 3,
    "min-clients": 2,
    "fraction": 1.0,
    "round-timeout": 600.0,
    "join-timeout": 600.0,
    "base-model": "",
    "base-model-id": "",
    "out-dir": "",
    "local-steps": 5,
    "r": 4,
    "lora-alpha": 8.0,
    "learning-rate": 1e-2,
    "batch-size": 4,
    "max-length": 128,
    "target-modules": "",  # comma-separated; empty = the studio's defaults for the base
    "a-seed": 0,
    "seed": 0,
}


# -- process plumbing: serve and join ----------------------------------------------------------------------


@dataclass
class Security:
    """TLS settings of one side: ``insecure`` (plain HTTP, for tests and trusted networks) or certificates."""

    insecure: bool = False
    certs_dir: Path | None = None  # serve: ca.crt, server.pem, server.key (Flower's example names)
    root_cert: Path | None = None  # join: the CA certificate that signed the server's

    def superlink_args(self) -> list[str]:
        """flower-superlink's TLS flags."""
        if self.insecure:
            return ["--insecure"]
        if self.certs_dir is None:
            raise StudioError("give --certs DIR (ca.crt, server.pem, server.key) or --insecure")
        files = {name: self.certs_dir / name for name in ("ca.crt", "server.pem", "server.key")}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise StudioError(f"missing certificate files: {', '.join(missing)}")
        return [
            "--ssl-ca-certfile", str(files["ca.crt"]),
            "--ssl-certfile", str(files["server.pem"]),
            "--ssl-keyfile", str(files["server.key"]),
        ]  # fmt: skip

    def supernode_args(self) -> list[str]:
        """flower-supernode's TLS flags."""
        if self.insecure:
            return ["--insecure"]
        if self.root_cert is None:
            raise StudioError("give --root-cert FILE (the CA certificate of the server) or --insecure")
        if not self.root_cert.is_file():
            raise StudioError(f"root certificate {self.root_cert} does not exist")
        return ["--root-certificates", str(self.root_cert)]


def flower_executable(name: str) -> str:
    """Path of a Flower console script next to this Python (the venv's), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise StudioError(f"{name} not found: install Flower with `pip install 'adapter-studio[federated]'`")
    return found


def flower_env(**extra: str) -> dict[str, str]:
    """This environment with Flower's scripts on PATH: the SuperLink and SuperNode start
    ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` by name."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        path = os.pathsep.join([bin_dir, path]) if path else bin_dir
    return {**os.environ, "PATH": path, **extra}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_app(app_dir: Path, run_config: dict[str, Any]) -> Path:
    """The Flower app directory of a run: only ``pyproject.toml``; the components are this module's apps."""
    app_dir.mkdir(parents=True, exist_ok=True)
    config_lines = "\n".join(f"{key} = {_toml_value(value)}" for key, value in run_config.items())
    (app_dir / "pyproject.toml").write_text(
        f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_NAME}"
version = "1.0.0"
description = "Adapter Studio federated LoRA (generated by `studio federated serve`)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "adapter-studio"

[tool.flwr.app.components]
serverapp = "studio.federated.site_apps:server_app"
clientapp = "studio.federated.site_apps:client_app"

[tool.flwr.app.config]
{config_lines}
""",
        encoding="utf-8",
    )
    return app_dir


def write_flower_home(home: Path, address: str, security: Security) -> Path:
    """A private FLWR_HOME whose config.toml names this SuperLink as the default connection for ``flwr run``."""
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]", f'address = "{address}"']
    if security.insecure:
        lines.append("insecure = true")
    else:
        assert security.certs_dir is not None
        lines.append(f"root-certificates = {json.dumps(str(security.certs_dir / 'ca.crt'))}")
    (home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return home


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Block until something accepts TCP connections on (host, port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StudioError(f"the SuperLink exited with code {proc.returncode} before it listened on {port}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise StudioError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def join_command(public_address: str, security: Security, base_model: str) -> str:
    """The command a site runs to join (printed by serve)."""
    tls = "--insecure" if security.insecure else "--root-cert ca.crt"
    return f"studio federated join --server {public_address} --data YOUR_DATA.jsonl --base {base_model} {tls}"


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _stop(proc: subprocess.Popen, grace: float = 10.0, group: bool = False) -> None:
    """SIGTERM the process (``group``: its whole group — the SuperLink's SuperExec and ServerApp too), then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM) if group else proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
            proc.wait()
    if group:  # the ServerApp may outlive the SuperLink itself
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class ServeOptions:
    """What ``studio federated serve`` was asked for."""

    method: str = "fedit"
    rounds: int = 3
    min_clients: int = 2
    host: str = "0.0.0.0"  # noqa: S104  (sites connect from other machines)
    port: int = 9092
    public_host: str | None = None  # what sites dial; default: this machine's host name
    base_model: str = ""
    out_dir: Path | None = None
    work_dir: Path | None = None
    round_timeout: float = 600.0
    join_timeout: float = 600.0
    local_steps: int = 5
    r: int = 4
    lora_alpha: float = 8.0
    learning_rate: float = 1e-2
    batch_size: int = 4
    max_length: int = 128
    target_modules: str = ""
    seed: int = 0
    enable_node_auth: bool = False


def serve(
    options: ServeOptions,
    security: Security,
    base_path: Path,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run a served federation to its end (SuperLink + one Flower run); returns the ServerApp's summary."""
    from studio.models.base_models import portable_base_id

    work = Path(options.work_dir or tempfile.mkdtemp(prefix="studio-federation-")).resolve()
    out_dir = Path(options.out_dir or work / "adapter").resolve()
    run_config = {
        **RUN_CONFIG_DEFAULTS,
        "method": options.method,
        "num-server-rounds": options.rounds,
        "min-clients": options.min_clients,
        "round-timeout": float(options.round_timeout),
        "join-timeout": float(options.join_timeout),
        "base-model": str(base_path),
        "base-model-id": portable_base_id(options.base_model or str(base_path)),
        "out-dir": str(out_dir),
        "local-steps": options.local_steps,
        "r": options.r,
        "lora-alpha": float(options.lora_alpha),
        "learning-rate": float(options.learning_rate),
        "batch-size": options.batch_size,
        "max-length": options.max_length,
        "target-modules": options.target_modules,
        "seed": options.seed,
    }
    app_dir = write_app(work / "app", run_config)
    local = "127.0.0.1" if options.host in ("0.0.0.0", "") else options.host  # noqa: S104
    home = write_flower_home(work / "flwr-home", f"{local}:{options.port}", security)
    env = flower_env(FLWR_HOME=str(home))
    superlink_argv = [
        flower_executable("flower-superlink"),
        *security.superlink_args(),
        "--host", options.host,
        "--port", str(options.port),
        "--disable-runtime-dependency-installation",  # the app is the studio, already installed
    ]  # fmt: skip
    if options.enable_node_auth:
        superlink_argv.append("--enable-supernode-auth")
    log_path = work / "superlink.log"
    processes: list[subprocess.Popen] = []
    # SIGTERM (a stopped service, a killed test) must still stop the SuperLink: make it an exception
    previous = signal.signal(signal.SIGTERM, _raise_exit) if _main_thread() else None
    with log_path.open("wb") as log:
        superlink = subprocess.Popen(
            superlink_argv, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    processes.append(superlink)
    try:
        wait_for_port(local, options.port, 60, superlink)
        public = f"{options.public_host or (local if options.host != '0.0.0.0' else socket.getfqdn())}:{options.port}"  # noqa: S104
        echo(f"SuperLink listening on {options.host}:{options.port} (log: {log_path})")
        echo(f"waiting for {options.min_clients} site(s); on each site run:")
        echo(f"  {join_command(public, security, options.base_model or str(base_path))}")
        # `--stream` relays the ServerApp's own log (rounds, replies, failures): kept in a file
        run_log = work / "run.log"
        echo(f"the run's log (the ServerApp, round by round): {run_log}")
        with run_log.open("wb") as out:
            runner = subprocess.Popen(
                [flower_executable("flwr"), "run", str(app_dir), CONNECTION, "--stream"],
                env=env,
                cwd=work,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        processes.append(runner)
        returncode = runner.wait()
        result_file = out_dir / RESULT_FILE
        if returncode != 0 or not result_file.exists():
            tails = [
                f"{path.name}:\n{path.read_text(encoding='utf-8', errors='replace')[-2000:]}"
                for path in (run_log, log_path)
            ]
            raise StudioError(
                f"the federated run ended without a result (flwr run exit {returncode}); " + "\n".join(tails)
            )
        return json.loads(result_file.read_text(encoding="utf-8"))
    finally:
        for proc in reversed(processes):
            _stop(proc, group=proc is superlink)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def supernode_command(
    server: str,
    data: Path,
    base_path: Path,
    security: Security,
    *,
    local_port: int | None = None,
    private_key: Path | None = None,
) -> list[str]:
    """The ``flower-supernode`` argv of a site: its data file and base model stay on this machine."""
    data = Path(data).expanduser().resolve()
    if not data.is_file():
        raise StudioError(f"data file {data} does not exist")
    for path in (data, base_path):
        if '"' in str(path) or "\\" in str(path):
            raise StudioError(
                f"{path}: a path with a double quote or backslash cannot be passed in Flower's node config"
            )
    argv = [
        flower_executable("flower-supernode"),
        *security.supernode_args(),
        "--superlink", server,
        # the SuperNode's own runtime API (its ClientApp processes connect to it): a free local port,
        # so several sites can run on one machine
        "--port", str(local_port or free_port()),
        "--node-config", f'data-path="{data}" base-model="{Path(base_path).resolve()}"',
    ]  # fmt: skip
    if private_key is not None:
        argv += ["--auth-supernode-private-key", str(private_key)]
    return argv


def register_result(registry: Any, summary: dict[str, Any], base_model: str) -> Any:
    """Add the served run's adapter to the registry; the summary (rounds, failures, sites) is its lineage."""
    from studio.training.job import dir_size, sha256_file

    out_dir = Path(summary["adapter_dir"])
    last = summary["per_round"].get(str(summary["rounds"]), {})
    losses = list(last.get("client_loss", {}).values())
    metrics = {
        "federated_rounds": summary["rounds"],
        "federated_sites": len(summary["joined"]),
        "federated_failed_clients": sum(len(f) for f in summary["failures"].values()),
        "federated_bytes_up": sum(r["bytes_up"] for r in summary["per_round"].values()),
    }
    if losses:
        metrics["train_loss"] = sum(losses) / len(losses)
    return registry.add_adapter(
        name=f"federated {summary['method']} across {len(summary['joined'])} sites",
        variant="lora",  # the export is a plain PEFT LoRA
        base_model=base_model,
        dataset_id=None,  # the data stayed on the sites
        ranks=summary["ranks"],
        trainable_params=0,
        size_bytes=dir_size(out_dir),
        path=str(out_dir),
        sha256=sha256_file(out_dir / "adapter_model.safetensors"),
        source_job_id=None,
        parents=[],
        metrics=metrics,
    )
