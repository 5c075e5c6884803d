"""The Flower apps of the across-sites mode: the ServerApp a SuperLink runs and the ClientApp each SuperNode runs.

Named by the app bundle that :func:`studio.federated.sites.serve` writes
(``studio.federated.site_apps:server_app`` / ``:client_app``); see :mod:`studio.federated.sites`
for how the processes fit together. Kept apart from the process plumbing so that ``join`` and
``serve`` start without importing torch.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from studio.federated.flower_app import WEIGHT_KEY, LoraStrategy, decode, encode, record_bytes
from studio.federated.sites import RESULT_FILE

NODE_WAIT_POLL_S = 1.0


def params_from_config(run_config: dict[str, Any], clients: int = 1):
    """The FederatedParams of a run from Flower's run config (the same schema as the simulated mode)."""
    from studio.federated.simulation import FederatedParams

    targets = [t for t in str(run_config.get("target-modules", "")).split(",") if t.strip()]
    return FederatedParams(
        method=run_config["method"],
        clients=clients,
        rounds=int(run_config["num-server-rounds"]),
        fraction=float(run_config["fraction"]),
        local_steps=int(run_config["local-steps"]),
        r=int(run_config["r"]),
        lora_alpha=float(run_config["lora-alpha"]),
        target_modules=targets or None,
        learning_rate=float(run_config["learning-rate"]),
        batch_size=int(run_config["batch-size"]),
        max_length=int(run_config["max-length"]),
        a_seed=int(run_config["a-seed"]),
        seed=int(run_config["seed"]),
    )


client_app = ClientApp()


@client_app.train()
def _client_train(msg: Message, context: Context) -> Message:
    """Train on this site's file (``node_config["data-path"]``) from the global adapter; reply with LoRA tensors."""
    from studio.federated.simulation import client_trainer
    from studio.models.base_models import portable_base_id

    data_path = Path(str(context.node_config["data-path"]))
    base = str(context.node_config["base-model"])
    expected = str(context.run_config.get("base-model-id", ""))
    if expected and portable_base_id(base) != expected:
        raise ValueError(f"this site's base model is {portable_base_id(base)!r}, the server's is {expected!r}")
    state = decode(msg.content["arrays"])
    targets = sorted({name.rsplit(".", 1)[-1] for name in state})  # PEFT matches target modules by suffix
    params = params_from_config(dict(context.run_config))
    with tempfile.TemporaryDirectory(prefix="studio-fed-site-") as work:
        trainer = client_trainer(params, [data_path], Path(base), Path(work), targets)
        update = trainer(0, state, dict(msg.content["config"]))
    arrays = encode(update.factors)
    metrics = MetricRecord(
        {WEIGHT_KEY: int(update.num_examples), "train_loss": float(update.train_loss), "bytes": record_bytes(arrays)}
    )
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


server_app = ServerApp()


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    """Wait for the sites, run the rounds, export the adapter and write ``federation.json``."""
    config = dict(context.run_config)
    out_dir = Path(str(config["out-dir"]))
    min_clients = int(config["min-clients"])
    summary = run_server(grid, config, min_clients, out_dir)
    (out_dir / RESULT_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")


def wait_for_nodes(grid: Grid, count: int, timeout: float, sleep: Callable[[float], None] = time.sleep) -> list[int]:
    """Node ids once at least ``count`` sites are connected; raises after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {count} sites joined within {timeout:.0f} s")
        sleep(NODE_WAIT_POLL_S)


def run_server(grid: Grid, config: dict[str, Any], min_clients: int, out_dir: Path) -> dict[str, Any]:
    """The server side of a served run on any Flower grid; returns the JSON-ready summary."""
    from studio.federated.simulation import GlobalModel

    began = time.monotonic()
    params = params_from_config(config, clients=max(1, min_clients))
    base_path = Path(str(config["base-model"]))
    server = GlobalModel(params, base_path, [])  # no data on the server: nothing to validate on
    initial, frozen = server.initial_state()
    joined = wait_for_nodes(grid, min_clients, float(config["join-timeout"]))
    strategy = LoraStrategy(
        params.method,
        fraction_train=params.fraction,
        min_train_nodes=min_clients,
        seed=params.seed,
        scale=server.scale,
        frozen_a=frozen,
    )
    result = strategy.start(
        grid,
        encode(initial),
        num_rounds=params.rounds,
        timeout=float(config["round-timeout"]),
        train_config=ConfigRecord(),
    )
    final = decode(result.arrays) if len(result.arrays) else initial
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = server.export(final, frozen, base_path, out_dir)
    return {
        "method": params.method,
        "rounds": params.rounds,
        "joined": [str(n) for n in joined],
        "adapter_dir": str(out_dir),
        "ranks": ranks,
        "per_round": {
            str(r): {
                "sampled": [str(n) for n in rec.sampled],
                "client_loss": {str(n): v for n, v in rec.client_loss.items()},
                "client_rows": {str(n): v for n, v in rec.client_rows.items()},
                "failed": {str(n): v for n, v in rec.failed.items()},
                "bytes_up": rec.bytes_up,
                "bytes_down": rec.bytes_down,
            }
            for r, rec in sorted(strategy.rounds.items())
        },
        "failures": {str(r): {str(n): v for n, v in f.items()} for r, f in strategy.failures.items()},
        "params": params.model_dump(),
        "elapsed_s": time.monotonic() - began,
    }
