"""The ``federated`` job: one dataset split among K simulated clients, Flower rounds, one registered PEFT LoRA out.

Steps: read the rows (the split's column recovered from the uploaded file), split them
(:mod:`studio.federated.planning`), plan the privacy budget and refuse an over-budget run before
anything trains, run :func:`studio.federated.simulation.run_federated_simulation` and report every
round as metrics at step = round (round 0: before training), so the registry holds per-round curves
like a training job's: ``val_loss``, ``client_<k>_loss`` (k from 1, as the client-mix chart names
them), ``bytes_up``/``bytes_down``, ``failed_clients`` and, with DP, ``epsilon`` (the largest ε any
client has spent so far). The adapter is a standard PEFT LoRA (FLoRA: the stacked LoRA of every
round) registered with variant ``lora``, the strategy in its name, README and ``federated.json``.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from studio.progress import Reporter
from studio.schema import SCHEMA_VERSION, FederatedRequest

VARIANT = "lora"  # every strategy's result loads as a plain PEFT LoRA
STRATEGY_TITLES = {"fedit": "FedIT", "ffa": "FFA-LoRA", "flora": "FLoRA", "lora_fair": "LoRA-FAIR"}


def round_metrics(update: dict[str, Any]) -> dict[str, float]:
    """The registry metrics of one round from the simulation's progress dict."""
    values = {
        "val_loss": float(update["val_loss"]),
        "bytes_up": float(update.get("bytes_up", 0)),
        "bytes_down": float(update.get("bytes_down", 0)),
        "failed_clients": float(len(update.get("failed") or {})),
    }
    for k, loss in sorted((update.get("client_loss") or {}).items()):
        values[f"client_{k + 1}_loss"] = float(loss)
    if "epsilon" in update:
        values["epsilon"] = float(update["epsilon"])
    return values


def run_federated_job(request: FederatedRequest, reporter: Reporter, ctx: Any) -> dict[str, Any]:
    """Plan, run and register a simulated federated LoRA; returns the adapter id and the last round's numbers."""
    from studio.federated.planning import load_rows, plan_privacy, preview_split
    from studio.models.base_models import resolve_base_model

    registry = ctx.registry
    phase = _phase_reporter(reporter, request.rounds)
    dataset = registry.get_dataset(request.dataset_id)
    phase(f"reading dataset {request.dataset_id} and planning the split")
    rows = load_rows(dataset, request)
    split = preview_split(rows, request)
    plan = plan_privacy(request, [len(p) for p in split.parts])  # refuses an over-budget run: nothing trained yet
    title = STRATEGY_TITLES[request.strategy]
    reporter.log(
        f"{title} on dataset {request.dataset_id}: {len(rows)} rows, {len(split.validation)} held out, "
        f"{request.clients} clients ({request.split} split), {request.rounds} rounds × {request.local_steps} "
        f"local steps, {_share(request.fraction)} per round"
    )
    for line in split.lines():
        reporter.log(line)
    if plan is not None:
        reporter.log(plan.describe())
    phase(f"loading the base model {request.base_model}")
    resolved = resolve_base_model(request.base_model, ctx.settings, progress=reporter.log)

    work_dir = ctx.work_dir
    data_path = work_dir / "rows.jsonl"
    data_path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    params = _simulation_params(request, plan)
    out_dir = Path(ctx.settings.adapters_dir) / uuid.uuid4().hex
    last: dict[str, float] = {}

    def on_round(update: dict[str, Any]) -> None:
        reporter.check_cancelled()  # a cancel stops the job between rounds
        step = int(update["round"])
        last.clear()
        last.update(round_metrics(update))
        reporter.metrics(step, last)
        for client, reason in sorted((update.get("failed") or {}).items()):
            reporter.log(f"round {step}: client {client + 1} failed and was skipped: {reason}", "warning")
        eps = f", ε = {last['epsilon']:.3g}" if "epsilon" in last else ""
        reporter.progress(
            step, request.rounds, f"round {step}/{request.rounds}: validation loss {last['val_loss']:.4f}{eps}"
        )

    from studio.federated.simulation import run_federated_simulation

    try:
        result = run_federated_simulation(
            params,
            data_path=data_path,
            base_path=resolved.path,
            work_dir=work_dir,
            out_dir=out_dir,
            progress=on_round,
            phase=phase,
        )
        _write_extras(request, result, plan, resolved.path, out_dir, ctx.job_id, dataset)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)  # no half-written adapter is left behind
        raise
    return _register(request, result, plan, out_dir, ctx, dataset, last, reporter)


def _phase_reporter(reporter: Reporter, rounds: int):
    """A callable that reports a phase before round 0 as progress 0 of ``rounds`` with its message.

    Loading the base, splitting the rows and starting Flower take the job's first minute; without a message the
    Jobs page showed a bare "0% done" then.
    """

    def phase(message: str) -> None:
        reporter.check_cancelled()  # a cancel during the setup stops the job before the next phase
        reporter.progress(0, rounds, message)

    return phase


def _simulation_params(request: FederatedRequest, plan: Any):
    from studio.federated.simulation import FederatedParams

    values = request.simulation_params()
    values["privacy"] = plan.privacy if plan is not None else None
    return FederatedParams(**values)


def _write_extras(request, result, plan, base_path: Path, out_dir: Path, job_id, dataset) -> None:
    """Tokenizer (the chat template), the per-round record and a model card beside the PEFT files."""
    from studio.training.models import load_tokenizer_for

    load_tokenizer_for(base_path).save_pretrained(str(out_dir))
    record = {
        "schema_version": SCHEMA_VERSION,
        "job_id": job_id,
        "request": request.model_dump(mode="json"),
        "strategy": request.strategy,
        "privacy": None if plan is None else {**plan.privacy.model_dump(mode="json"), "planned_epsilon": plan.epsilon},
        "val_loss": result.val_loss,
        "client_loss": result.client_loss,
        "bytes_up": result.bytes_up,
        "bytes_down": result.bytes_down,
        "epsilon": result.epsilon,
        "failures": result.failures,
        "label_mix": result.label_mix,
        "fair_cosine": result.fair_cosine,
    }
    (out_dir / "federated.json").write_text(json.dumps(record, indent=2, default=str))
    (out_dir / "README.md").write_text(model_card(request, result, plan, dataset))


def _register(
    request, result, plan, out_dir: Path, ctx: Any, dataset, last: dict[str, float], reporter: Reporter
) -> dict[str, Any]:
    from studio.training.job import dir_size, sha256_file

    final_round = max(result.val_loss)
    metrics = {
        "eval_loss": result.val_loss[final_round],
        "initial_eval_loss": result.val_loss[0],
        "bytes_sent": float(sum(result.bytes_up.values()) + sum(result.bytes_down.values())),
        "federated_rounds": float(request.rounds),
        "federated_clients": float(request.clients),
    }
    if result.epsilon:
        metrics["epsilon"] = result.epsilon[max(result.epsilon)]
    title = STRATEGY_TITLES[request.strategy]
    row = ctx.registry.add_adapter(
        name=request.name or f"{title} on {dataset.name or f'dataset {request.dataset_id}'} (job {ctx.job_id})",
        variant=VARIANT,
        base_model=request.base_model,
        dataset_id=request.dataset_id,
        ranks=result.ranks,
        trainable_params=_params_of(out_dir),
        size_bytes=dir_size(out_dir),
        path=str(out_dir),
        sha256=sha256_file(out_dir / "adapter_model.safetensors"),
        source_job_id=ctx.job_id,
        metrics=metrics,
    )
    failed = sum(len(f) for f in result.failures.values())
    reporter.log(
        f"adapter {row.id} saved to {out_dir}: {title}, validation loss {metrics['initial_eval_loss']:.4f} → "
        f"{metrics['eval_loss']:.4f}" + (f", {failed} client rounds failed" if failed else "")
    )
    return {
        "adapter_id": row.id,
        "adapter_path": str(out_dir),
        "strategy": request.strategy,
        "rounds": request.rounds,
        "clients": request.clients,
        "failed_client_rounds": failed,
        "partitions": [len(p) for p in result.partitions],
        "label_mix": result.label_mix,
        **metrics,
        **({"last_round": last} if last else {}),
    }


def _params_of(out_dir: Path) -> int:
    """Parameters in the saved LoRA (FLoRA's stack included)."""
    import math

    from safetensors import safe_open

    with safe_open(str(out_dir / "adapter_model.safetensors"), framework="pt") as handle:
        return sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())  # noqa: SIM118


def model_card(request: FederatedRequest, result: Any, plan: Any, dataset: Any) -> str:
    """A short README: the federated setting, the curve's ends, the privacy guarantee, how to load it."""
    from studio.loading_recipes import loading_section
    from studio.services.downloads import PortableBase

    base = PortableBase.of(request.base_model)
    title = STRATEGY_TITLES[request.strategy]
    final_round = max(result.val_loss)
    lines = [
        f"# {request.name or title + ' federated adapter'}",
        "",
        f"A plain PEFT LoRA for `{base.portable_id}`, trained by Adapter Studio with federated {title} "
        f"(Flower, simulated): {request.clients} clients, {request.split} split of dataset "
        f"{dataset.name or request.dataset_id}, {request.rounds} rounds × {request.local_steps} local steps.",
        "",
        f"- Validation loss: {result.val_loss[0]:.4f} before, {result.val_loss[final_round]:.4f} after round "
        f"{final_round}",
        f"- Bytes sent: {sum(result.bytes_up.values()):,} up, {sum(result.bytes_down.values()):,} down",
        f"- Modules: {len(result.ranks)}; ranks {min(result.ranks.values())}–{max(result.ranks.values())}"
        + (" (FLoRA: every round's LoRAs stacked)" if request.strategy == "flora" else ""),
    ]
    if plan is not None:
        spent = result.epsilon[max(result.epsilon)] if result.epsilon else 0.0
        lines.append(f"- Differential privacy: {plan.describe()}; spent ε = {spent:.3g} (largest over clients)")
    lines += [
        "",
        *loading_section(base.portable_id, "causal-lm", max_rank=max(result.ranks.values()), base_note=base.note()),
    ]
    return "\n".join(lines)


def _share(fraction: float) -> str:
    """The clients taking part in a round, in words: "every client" for 1 ("1 of the clients" read as one)."""
    return "every client" if fraction >= 1 else f"{fraction:.0%} of the clients"
