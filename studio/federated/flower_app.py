"""The Flower side of federated LoRA: one Strategy for FedIT / FFA-LoRA / FLoRA / LoRA-FAIR and a ClientApp.

Built on Flower's Message API (``flwr.serverapp.strategy``, flwr ≥ 1.20): the strategy subclasses
Flower's ``FedAvg`` for its message construction, reply checking and logging, and replaces
node sampling (seeded per round, so a run is reproducible) and aggregation (which calls
:mod:`studio.federated.aggregation`). The same strategy and ClientApp run under
``Strategy.start(grid, …)`` with any Flower ``Grid``: the deployment runtime's (SuperLink and
SuperNodes, the across-sites mode) or the in-process one of :mod:`studio.federated.simulation`.

Wire format (ArrayRecord keys): ``"<module>|A"`` and ``"<module>|B"`` (PEFT's raw lora_A / lora_B).
Server → client: the global adapter (FFA-LoRA: B only; FLoRA: the stack merged so far).
Client → server: the client's trained A and B (FFA-LoRA: B only — half the traffic for square
layers) and a MetricRecord with ``num-examples`` (the weight n_k) and ``train_loss``.

A client that raises (or times out: the grid gives no reply) is skipped for the round and
recorded in :attr:`LoraStrategy.failures`; the round aggregates the others.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from studio.federated.aggregation import FAIR_LAMBDA, METHODS, aggregate_modules

Factors = dict[str, tuple[torch.Tensor | None, torch.Tensor]]
WEIGHT_KEY = "num-examples"  # Flower's convention for n_k


def encode(factors: Factors) -> ArrayRecord:
    """{module: (A or None, B)} → ArrayRecord with ``module|A`` / ``module|B`` keys (A omitted when None)."""
    arrays: dict[str, torch.Tensor] = {}
    for name, (a, b) in sorted(factors.items()):
        if a is not None:
            arrays[f"{name}|A"] = a.detach().cpu().contiguous()
        arrays[f"{name}|B"] = b.detach().cpu().contiguous()
    return ArrayRecord(arrays)


def decode(record: ArrayRecord) -> Factors:
    """The inverse of :func:`encode` (A is None where it was not sent)."""
    tensors = record.to_torch_state_dict() if len(record) else {}
    out: dict[str, list[Any]] = {}
    for key, tensor in tensors.items():
        name, part = key.rsplit("|", 1)
        out.setdefault(name, [None, None])[0 if part == "A" else 1] = tensor
    return {name: (a, b) for name, (a, b) in out.items()}


def record_bytes(record: ArrayRecord) -> int:
    """Bytes of tensor data in a record (what a message carries, framing aside)."""
    return sum(array.numpy().nbytes for array in record.values())


@dataclass
class LocalUpdate:
    """What a client's local training returns."""

    factors: Factors  # FFA-LoRA: A is None
    num_examples: int
    train_loss: float
    extra: dict[str, float] = field(default_factory=dict)  # more client metrics (DP: "epsilon" spent so far)


# (partition id, the global state, the round's config) -> the client's update
LocalTrainer = Callable[[int, Factors, dict[str, Any]], LocalUpdate]


def make_client_app(trainer: LocalTrainer) -> ClientApp:
    """A Flower ClientApp whose ``train`` runs ``trainer`` on this node's partition.

    The partition is ``node_config["partition-id"]`` (Flower's convention); the reply carries
    the update's tensors and ``num-examples`` / ``train_loss``.
    """
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config = dict(msg.content["config"])
        update = trainer(int(context.node_config["partition-id"]), decode(msg.content["arrays"]), config)
        arrays = encode(update.factors)
        metrics = MetricRecord(
            {
                **{k: float(v) for k, v in update.extra.items()},
                WEIGHT_KEY: int(update.num_examples),
                "train_loss": float(update.train_loss),
                "bytes": record_bytes(arrays),
            }
        )
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    return app


@dataclass
class RoundRecord:
    """One round as the server saw it."""

    round: int
    sampled: list[int]
    client_loss: dict[int, float] = field(default_factory=dict)  # node id -> local training loss
    client_rows: dict[int, int] = field(default_factory=dict)
    client_epsilon: dict[int, float] = field(default_factory=dict)  # node id -> ε its rows have spent (DP runs)
    failed: dict[int, str] = field(default_factory=dict)  # node id -> reason
    bytes_up: int = 0
    bytes_down: int = 0
    fair_cosine: tuple[float, float] | None = None  # LoRA-FAIR: mean cos(ΔW*, ·) before / after the correction


class LoraStrategy(FedAvg):
    """FedAvg's message plumbing with LoRA-aware aggregation; ``method`` is one of fedit, ffa, flora, lora_fair."""

    def __init__(
        self,
        method: str,
        *,
        fraction_train: float = 1.0,
        min_train_nodes: int = 1,
        seed: int = 0,
        scale: float = 1.0,
        fair_solver: str = "iterative",
        fair_lambda: float = FAIR_LAMBDA,
        frozen_a: dict[str, torch.Tensor] | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown federated method {method!r}: one of {', '.join(METHODS)}")
        if method == "ffa" and not frozen_a:
            raise ValueError("FFA-LoRA needs the server's frozen A of every module")
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=0.0,  # the global model is evaluated on the server (evaluate_fn)
            min_train_nodes=min_train_nodes,
            min_available_nodes=min_train_nodes,
        )
        self.method, self.seed, self.scale = method, seed, scale
        self.fair_solver, self.fair_lambda = fair_solver, fair_lambda
        self.frozen_a = frozen_a or {}
        self.rounds: dict[int, RoundRecord] = {}
        self._global: Factors = {}
        self._sent: list[Message] = []  # this round's instructions; the grid gives them their ids when it sends

    @property
    def failures(self) -> dict[int, dict[int, str]]:
        """{round: {node id: reason}} of the clients skipped because they failed."""
        return {r: dict(rec.failed) for r, rec in self.rounds.items() if rec.failed}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample ``fraction_train`` of the nodes (at least ``min_train_nodes``), seeded by (seed, round)."""
        nodes = sorted(grid.get_node_ids())
        size = min(len(nodes), max(self.min_train_nodes, int(len(nodes) * self.fraction_train)))
        chosen = sorted(random.Random(self.seed * 1_000_003 + server_round).sample(nodes, size))
        config["server-round"] = server_round
        config["method"] = self.method
        self._global = decode(arrays)
        self.rounds[server_round] = RoundRecord(server_round, chosen, bytes_down=record_bytes(arrays) * len(chosen))
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        self._sent = list(self._construct_messages(record, chosen, MessageType.TRAIN))
        return self._sent

    def _failed_node(self, error: Message, sampled: list[int]) -> int:
        """The node an error reply is about.

        A node's own error (its ClientApp raised) comes from that node; but when a node is gone
        (no heartbeat), the SuperLink answers in its place with ``src_node_id`` = the SuperLink's
        own id, so the node is found through the instruction the error replies to.
        """
        src = error.metadata.src_node_id
        if src in sampled:
            return src
        by_id = {msg.metadata.message_id: msg.metadata.dst_node_id for msg in self._sent}
        return by_id.get(error.metadata.reply_to_message_id, src)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[Any, Any]:
        """Aggregate the replies that carry results; failed clients are recorded and left out."""
        valid, errors = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        record = self.rounds.setdefault(server_round, RoundRecord(server_round, []))
        failed = {self._failed_node(msg, record.sampled): msg.error.reason for msg in errors}
        answered = {msg.metadata.src_node_id for msg in valid} | set(failed)
        record.failed.update(failed)
        for node in record.sampled:
            if node not in answered:
                record.failed[node] = "no reply before the round's timeout"
        if not valid:
            return None, None  # the global adapter stays as it was
        updates, weights = [], []
        for msg in valid:
            metrics = msg.content["metrics"]
            node = msg.metadata.src_node_id
            record.client_loss[node] = float(metrics["train_loss"])
            record.client_rows[node] = int(metrics[WEIGHT_KEY])
            if "epsilon" in metrics:
                record.client_epsilon[node] = float(metrics["epsilon"])
            record.bytes_up += record_bytes(msg.content["arrays"])
            updates.append(decode(msg.content["arrays"]))
            weights.append(int(metrics[WEIGHT_KEY]))
        previous: Factors | None = None
        if self.method == "ffa":
            previous = {name: (a, torch.zeros(0)) for name, a in self.frozen_a.items()}
        elif self.method == "flora":
            previous = self._global
        state, reports = aggregate_modules(
            self.method,
            updates,
            weights,
            previous=previous,  # type: ignore[arg-type]
            scale=self.scale,
            fair_solver=self.fair_solver,
            fair_lambda=self.fair_lambda,
        )
        if reports:
            n = len(reports)
            record.fair_cosine = (
                sum(r.cosine_before for r in reports.values()) / n,
                sum(r.cosine_after for r in reports.values()) / n,
            )
        if self.method == "ffa":
            state = {name: (None, b) for name, (_, b) in state.items()}  # A never travels
        total = sum(weights)
        loss = sum(w * record.client_loss[m.metadata.src_node_id] for w, m in zip(weights, valid, strict=True)) / total
        metrics = MetricRecord({"train_loss": loss, "bytes_up": record.bytes_up, "clients": len(valid)})
        return encode(state), metrics
