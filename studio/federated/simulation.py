"""Simulated federated LoRA: K clients × R rounds of Flower in one process (issue #14, "simulated" mode).

How Flower runs here, and why. Flower's simulation runtime (``flwr.simulation.run_simulation``)
executes ClientApps only through its Ray backend (``flwr[simulation]``: a 79 MB wheel that starts
a Ray cluster — GCS, raylet, workers — per run); on a 2-core worker that costs more than the
tiny runs it hosts, and Ray is one more service to operate. The deployment runtime (SuperLink +
SuperNodes) is the across-sites mode and runs each ClientApp in a fresh subprocess that
re-imports torch every round. So the simulated mode drives the SAME Flower objects — the
:class:`~studio.federated.flower_app.LoraStrategy` through Flower's own ``Strategy.start`` loop,
and the ClientApp of :func:`~studio.federated.flower_app.make_client_app` called as Flower calls
it, ``app(message, context)`` — over :class:`LocalGrid`, an in-process implementation of
Flower's public ``Grid`` interface that delivers each message to its node's ClientApp
sequentially and turns an exception into Flower's error reply, exactly as the simulation
runtime does. Moving to real sites changes the grid, not the strategy or the client.

Each client trains with the studio's own :func:`studio.training.loop.run_training` (a few
local steps, the global adapter loaded through its ``init_model`` hook); the server evaluates
the global adapter on held-out rows with the training code's ``evaluate`` after every round.
Causal-LM only for now (a classifier's head would need aggregating too).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from uuid import uuid4

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from pydantic import BaseModel, ConfigDict, Field

from studio.federated.flower_app import Factors, LocalUpdate, LoraStrategy, decode, encode, make_client_app
from studio.federated.partition import split_rows  # noqa: F401  (re-exported: the split lives with the others)
from studio.schema import FederatedPrivacy

Method = Literal["fedit", "ffa", "flora", "lora_fair"]


class FederatedParams(BaseModel):
    """What a simulated federated run needs (the job's request schema will wrap this)."""

    model_config = ConfigDict(extra="forbid")

    method: Method = Field("fedit", description="Aggregation: FedIT, FFA-LoRA, FLoRA (stacking) or LoRA-FAIR.")
    clients: int = Field(4, ge=1, le=100, description="Number of simulated clients K.")
    rounds: int = Field(3, ge=1, le=1000, description="Federated rounds R.")
    fraction: float = Field(1.0, gt=0, le=1, description="Share of the clients sampled each round.")
    local_steps: int = Field(5, ge=1, le=100_000, description="Optimizer steps each sampled client runs per round.")
    split: Literal["iid", "dirichlet", "label_shares", "column"] = Field(
        "iid", description="How rows are dealt to clients."
    )
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (small = skewed).")
    label_shares: list[list[float]] = Field(
        default_factory=lambda: [[0.1, 0.9], [0.9, 0.1], [0.5, 0.5]],
        description="label_shares split: each client's share of every label (labels in sorted order).",
    )
    label_column: str = Field("label", description="Row field used as the label (Dirichlet split, mix chart).")
    client_column: str = Field("client", description="Row field naming each row's client (column split).")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="Rows held out for the global validation loss.")
    r: int = Field(4, ge=1, le=256)
    lora_alpha: float = Field(8.0, gt=0)
    target_modules: list[str] | None = None
    learning_rate: float = Field(1e-2, gt=0, le=1)
    batch_size: int = Field(4, ge=1, le=512)
    max_length: int = Field(128, ge=16, le=32_768)
    fair_solver: Literal["iterative", "ridge"] = "iterative"
    fair_lambda: float = Field(0.01, ge=0)
    a_seed: int = Field(0, ge=0, description="FFA-LoRA: seed of the frozen A shared by server and clients.")
    seed: int = Field(0, ge=0)
    privacy: FederatedPrivacy | None = Field(None, description="DP-SGD on every client (σ resolved); None: no DP.")


@dataclass
class FederatedResult:
    """Per-round curves and the final adapter of a simulated run."""

    adapter_dir: Path
    val_loss: dict[int, float]  # round (0 = before training) -> global validation loss
    client_loss: dict[int, dict[int, float]]  # round -> {client index: local training loss}
    bytes_up: dict[int, int]
    bytes_down: dict[int, int]
    failures: dict[int, dict[int, str]]  # round -> {client index: reason}
    partitions: list[list[int]]
    label_mix: dict[str, dict[str, int]] = field(default_factory=dict)
    fair_cosine: dict[int, tuple[float, float]] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    epsilon: dict[int, float] = field(default_factory=dict)  # DP: round -> max ε spent over the clients so far


class LocalGrid(Grid):
    """Flower's ``Grid`` delivered in-process: node ``k + 1`` runs ``client_app`` on partition ``k``."""

    def __init__(self, client_app: Any, clients: int, run_config: dict[str, Any] | None = None) -> None:
        self.app = client_app
        self.contexts = {
            k + 1: Context(
                run_id=1,
                node_id=k + 1,
                node_config={"partition-id": k, "num-partitions": clients},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for k in range(clients)
        }
        self._run: Any = None
        self._replies: dict[str, Message] = {}
        # A ServerApp's process carries its task identity (Flower's runtimes set it before the
        # ServerApp runs, as flwr.server.compat does); Message() reads it for new instructions.
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid4().hex  # as Flower's own grids number messages
            self._replies[msg.metadata.message_id] = self._deliver(msg)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, msg: Message) -> Message:
        """Run the node's ClientApp; an exception becomes Flower's error reply (the round goes on)."""
        try:
            reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
        except Exception as exc:  # noqa: BLE001  (any client failure is the client's, not the server's)
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc).__name__}: {exc}"),
                reply_to=msg,
            )
        reply.metadata.__dict__["_message_id"] = uuid4().hex
        return reply


# -- data ---------------------------------------------------------------------------------------------


# -- the client: the studio's training function on a few local steps -----------------------------------


def variant_for(params: FederatedParams, targets: list[str]) -> tuple[str, dict[str, Any]]:
    """The studio variant a client trains and its params (FFA-LoRA: A frozen at ``a_seed``)."""
    common = {"r": params.r, "lora_alpha": params.lora_alpha, "lora_dropout": 0.0, "target_modules": targets}
    if params.method == "ffa":
        return "ffa_lora", {**common, "a_seed": params.a_seed}
    return "lora", common


def client_trainer(
    params: FederatedParams, data_files: list[Path], base_path: Path, work_dir: Path, targets: list[str]
) -> Callable[[int, Factors, dict[str, Any]], LocalUpdate]:
    """The LocalTrainer of the simulation: ``run_training`` on the client's rows from the global state."""
    from studio.device import DeviceInfo
    from studio.progress import MemoryReporter
    from studio.schema import TrainingHyperParams, TrainRequest
    from studio.training.loop import run_training
    from studio.training.setup import TrainingData
    from studio.variants.peft_common import tuner_layers

    variant, variant_params = variant_for(params, targets)
    ledgers: dict[int, Any] = {}  # DP: one ledger per client, kept across rounds (ε covers every round)

    def load_global(state: Factors) -> Callable[[Any], None]:
        def init(model: Any) -> None:
            layers = tuner_layers(model)
            with torch.no_grad():
                for name, (a, b) in state.items():
                    layer = layers[name]
                    if params.method == "flora":  # the stack merged so far joins W0; the LoRA starts fresh
                        if a is not None and a.shape[0] > 0:
                            weight = layer.get_base_layer().weight
                            weight += (b.double() @ a.double()).to(weight.dtype)
                        continue
                    if a is not None:
                        layer.lora_A["default"].weight.copy_(a)
                    layer.lora_B["default"].weight.copy_(b)

        return init

    def train(partition: int, state: Factors, config: dict[str, Any]) -> LocalUpdate:
        server_round = int(config.get("server-round", 1))
        if params.privacy is not None:
            return train_private(partition, state, server_round)
        hyper = TrainingHyperParams(
            learning_rate=params.learning_rate,
            max_steps=params.local_steps,
            batch_size=params.batch_size,
            max_length=params.max_length,
            warmup_ratio=0.0,
            lr_scheduler="constant",
            validation_fraction=0.0,
            log_every=params.local_steps,
            eval_every=100_000,
            save_every=100_000,
            precision="fp32",
        )
        request = TrainRequest(
            dataset_id=1,
            base_model=str(base_path),
            task="causal-lm",
            variant=variant,
            variant_params=variant_params,
            hyper=hyper,
            seed=params.seed + 1000 * server_round + partition,  # a fresh data order per round and client
        )
        data = TrainingData(path=data_files[partition], report={"task": "causal-lm"}, name=f"client {partition + 1}")
        result = run_training(
            request,
            MemoryReporter(),
            settings=None,
            device=DeviceInfo("cpu", "CPU"),
            work_dir=work_dir / f"client{partition + 1}-round{server_round}",
            dataset=data,
            base_path=base_path,
            init_model=load_global(state),
        )
        factors: Factors = {}
        for name, layer in tuner_layers(result.model).items():
            a = layer.lora_A["default"].weight.detach().cpu().clone()
            b = layer.lora_B["default"].weight.detach().cpu().clone()
            factors[name] = (None if params.method == "ffa" else a, b)
        losses = list(result.losses.values())
        rows = sum(1 for _ in data_files[partition].open(encoding="utf-8"))
        return LocalUpdate(factors, rows, sum(losses) / max(1, len(losses)))

    def train_private(partition: int, state: Factors, server_round: int) -> LocalUpdate:
        from studio.federated.dp_client import dp_local_round
        from studio.privacy.accounting import PrivacyLedger
        from studio.training.data import read_jsonl

        ledger = ledgers.setdefault(partition, PrivacyLedger(delta=params.privacy.delta))
        return dp_local_round(
            params,
            rows=read_jsonl(data_files[partition]),
            base_path=base_path,
            targets=targets,
            init=load_global(state),
            ledger=ledger,
            seed=params.seed + 1000 * server_round + partition,
        )

    return train


# -- the server: initial adapter, global evaluation, export ------------------------------------------------


class GlobalModel:
    """The base model on the server: builds the initial adapter and scores a global state on held-out rows."""

    def __init__(self, params: FederatedParams, base_path: Path, val_rows: list[dict[str, Any]]) -> None:
        from studio.training.data import eval_batches
        from studio.training.models import load_base_model, load_tokenizer_for
        from studio.training.tokenise import encode_rows
        from studio.variants.targets import default_target_modules

        self.params = params
        tokenizer = load_tokenizer_for(base_path)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.model = load_base_model(base_path, "causal-lm", None, self.pad_id)
        self.targets = list(params.target_modules or default_target_modules(self.model))
        examples = encode_rows(val_rows, tokenizer, task="causal-lm", max_length=params.max_length).examples
        self.batches = list(eval_batches(examples, params.batch_size, self.pad_id))
        self.scale = params.lora_alpha / params.r

    def initial_state(self) -> tuple[Factors, dict[str, torch.Tensor]]:
        """(what round 1 broadcasts, FFA-LoRA's frozen A per module). LoRA's own init, seeded."""
        import copy

        from peft import LoraConfig, get_peft_model

        from studio.variants.ffa_lora import frozen_a
        from studio.variants.peft_common import tuner_layers

        torch.manual_seed(self.params.seed)
        config = LoraConfig(r=self.params.r, lora_alpha=self.params.lora_alpha, target_modules=self.targets)
        layers = tuner_layers(get_peft_model(copy.deepcopy(self.model), config))
        state: Factors = {}
        frozen: dict[str, torch.Tensor] = {}
        for name, layer in layers.items():
            a = layer.lora_A["default"].weight.detach().clone()
            b = layer.lora_B["default"].weight.detach().clone()
            if self.params.method == "ffa":
                frozen[name] = frozen_a(name, a.shape[0], a.shape[1], self.params.a_seed)
                state[name] = (None, b)
            elif self.params.method == "flora":
                state[name] = (a.new_zeros(0, a.shape[1]), b.new_zeros(b.shape[0], 0))  # nothing merged yet
            else:
                state[name] = (a, b)
        return state, frozen

    def deltas(self, state: Factors, frozen: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ΔW per module of a global state (FLoRA's stack has scale 1, the others alpha / r)."""
        out = {}
        for name, (a, b) in state.items():
            a = frozen[name] if a is None else a
            scale = 1.0 if self.params.method == "flora" else self.scale
            out[name] = scale * (b.double() @ a.double())
        return out

    def validation_loss(self, state: Factors, frozen: dict[str, torch.Tensor]) -> float:
        """Mean token loss of base + ΔW(state) on the held-out rows (the base is restored after)."""
        from studio.training.losses import evaluate

        saved = {}
        with torch.no_grad():
            for name, delta in self.deltas(state, frozen).items():
                weight = self.model.get_submodule(name).weight
                saved[name] = weight.detach().clone()
                weight += delta.to(weight.dtype)
        try:
            return evaluate(self.model, self.batches, "causal-lm").loss
        finally:
            with torch.no_grad():
                for name, original in saved.items():
                    self.model.get_submodule(name).weight.copy_(original)

    def export(self, state: Factors, frozen: dict[str, torch.Tensor], base_path: Path, out_dir: Path) -> dict[str, int]:
        """The global adapter as a standard PEFT LoRA (scale 1; FLoRA: the stacked LoRA of every round)."""
        from studio.training.models import load_base_model
        from studio.variants.base import ExportContext
        from studio.variants.lora_export import write_plain_lora

        factors = {}
        for name, (a, b) in state.items():
            a = frozen[name] if a is None else a
            scale = 1.0 if self.params.method == "flora" else self.scale
            factors[name] = ((scale * b.double()).float(), a.float())
        ectx = ExportContext(fresh_base=lambda: load_base_model(base_path, "causal-lm"), task="causal-lm")
        return write_plain_lora(factors, out_dir, ectx, heads={})


# -- the run ---------------------------------------------------------------------------------------------


def run_federated_simulation(
    params: FederatedParams,
    *,
    data_path: Path,
    base_path: Path,
    work_dir: Path,
    out_dir: Path,
    progress: Callable[[dict[str, Any]], None] | None = None,
    phase: Callable[[str], None] | None = None,
) -> FederatedResult:
    """K clients × R rounds of Flower on one JSONL dataset; the final adapter is written to ``out_dir``.

    ``progress`` gets one dict per round (round 0 = before training): ``round``, ``val_loss``,
    ``client_loss`` {client: loss}, ``bytes_up``, ``bytes_down``, ``failed`` {client: reason}, and
    with DP ``epsilon`` (the largest ε any client has spent so far) and ``client_epsilon`` {client: ε}.
    ``phase`` gets a sentence for each step before round 0 reports (splitting, loading the base, starting
    Flower), so a job's page says what the first minute is spent on.
    """
    say = phase or (lambda message: None)
    from studio.federated.partition import label_mix
    from studio.training.data import read_jsonl

    began = time.monotonic()
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    rows = read_jsonl(Path(data_path))
    say(f"splitting {len(rows)} rows among {params.clients} clients")
    val_idx, parts = split_rows(rows, params)
    files = []
    for k, part in enumerate(parts):
        path = work_dir / f"client{k + 1}.jsonl"
        path.write_text("".join(json.dumps(rows[i]) + "\n" for i in part), encoding="utf-8")
        files.append(path)
    labels = [rows[i].get(params.label_column, "(none)") for i in range(len(rows))]
    mix = label_mix(labels, parts)

    say("loading the base model for the server")
    server = GlobalModel(params, Path(base_path), [rows[i] for i in val_idx])
    initial, frozen = server.initial_state()
    strategy = LoraStrategy(
        params.method,
        fraction_train=params.fraction,
        min_train_nodes=max(1, math.ceil(params.fraction * params.clients)),
        seed=params.seed,
        scale=server.scale,
        fair_solver=params.fair_solver,
        fair_lambda=params.fair_lambda,
        frozen_a=frozen,
    )
    app = make_client_app(client_trainer(params, files, Path(base_path), work_dir, server.targets))
    say(f"starting Flower with {params.clients} clients: round 0 measures the validation loss before training")
    grid = LocalGrid(app, params.clients)
    val_loss: dict[int, float] = {}
    spent: dict[int, float] = {}  # client index -> ε its rows have spent so far (DP)
    epsilon: dict[int, float] = {}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        val_loss[server_round] = server.validation_loss(decode(arrays), frozen)
        record = strategy.rounds.get(server_round)
        if record is not None:
            spent.update({n - 1: v for n, v in record.client_epsilon.items()})
        dp = {}
        if params.privacy is not None:
            epsilon[server_round] = max(spent.values(), default=0.0)
            dp = {"epsilon": epsilon[server_round], "client_epsilon": dict(spent)}
        if progress is not None:
            progress(
                {
                    **dp,
                    "round": server_round,
                    "val_loss": val_loss[server_round],
                    "client_loss": {n - 1: v for n, v in record.client_loss.items()} if record else {},
                    "bytes_up": record.bytes_up if record else 0,
                    "bytes_down": record.bytes_down if record else 0,
                    "failed": {n - 1: v for n, v in record.failed.items()} if record else {},
                }
            )
        return MetricRecord({"val_loss": val_loss[server_round]})

    result = strategy.start(
        grid, encode(initial), num_rounds=params.rounds, train_config=ConfigRecord(), evaluate_fn=evaluate_fn
    )
    final = decode(result.arrays) if len(result.arrays) else initial
    ranks = server.export(final, frozen, Path(base_path), out_dir)
    return FederatedResult(
        adapter_dir=out_dir,
        val_loss=val_loss,
        client_loss={r: {n - 1: v for n, v in rec.client_loss.items()} for r, rec in strategy.rounds.items()},
        bytes_up={r: rec.bytes_up for r, rec in strategy.rounds.items()},
        bytes_down={r: rec.bytes_down for r, rec in strategy.rounds.items()},
        failures={r: {n - 1: v for n, v in f.items()} for r, f in strategy.failures.items()},
        partitions=parts,
        label_mix=mix,
        fair_cosine={r: rec.fair_cosine for r, rec in strategy.rounds.items() if rec.fair_cosine},
        ranks=ranks,
        elapsed_s=time.monotonic() - began,
        epsilon=epsilon,
    )
