"""Train LoRA and its variants at matched budgets through the studio's job path; results table + paper checks.

Research-variants item 7. Everything goes through the studio's registry like a real job:
``build_services`` on ``--data-dir`` (embedded SQLite registry), datasets added with
``DatasetService.add``, each run submitted with ``JobService.submit`` and executed inline
with ``studio.jobs.runner.execute_job`` (the function a Celery worker calls), so the job
rows, per-step metrics (training loss every step, validation loss every ``--eval-every``
steps), rank snapshots and adapters all land in the registry. Each trained adapter is
then scored on held-out rows by an evaluation job (``EvalRequest``, also in the registry).

Matched budget = same rows, seed(s), steps, batch size, max length and learning rate for
every variant; each variant keeps its own default parameters (rank etc. — see the table).

Where a paper's claim can be checked at this scale, the script checks it with the numbers:

* LoRA-GA / LoRA-SB reach a given loss in fewer steps: the step at which the trailing
  5-step mean of the training loss (identical batches for every variant) first reaches
  plain LoRA's final trailing mean, plus validation loss at each eval point;
* DyLoRA holds quality across ranks: its adapter evaluated at several ranks with
  ``studio.variants.dylora.evaluate_over_ranks``, against plain LoRA naively truncated to
  the same number of components;
* SoRA keeps quality with fewer ranks: active ranks after training (registry rank
  snapshots) and held-out loss against LoRA;
* FFA-LoRA trains half the parameters: trainable parameter count against LoRA.

    python scripts/compare_variants.py --data-dir /tmp/compare-studio                 # the documented subset
    python scripts/compare_variants.py --data-dir /tmp/compare-all --variants all     # every variant (~2 min each here)

Writes docs/results/variant_comparison.md and bench/results/variant_comparison.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    DEFAULT_BASE,
    DOCS_RESULTS_DIR,
    RESULTS_DIR,
    add_data_argument,
    add_threads_argument,
    alpaca_rows,
    data_file,
    embedded_settings,
    loadavg,
    machine_info,
    markdown_table,
    prepare_env,
    read_jsonl,
    take_rows,
    use_data,
    write_json,
    write_jsonl,
)
from studio.comparison import (  # noqa: E402  (shared with a sweep in compare mode: `studio sweep --compare`)
    SMOOTH,
    eval_steps_to,
    overlay_svg,
    run_metrics,
    steps_to,
    trailing_mean,
)
from studio.comparison import fmt_curve as _fmt_curve  # noqa: E402

# A representative subset that fits ~25 CPU-minutes here: PEFT flavours, the two "faster
# convergence" inits, and every variant a checked claim is about.
DEFAULT_VARIANTS = "lora,dora,pissa,lora_ga,lora_sb,dylora,ffa_lora,sora"
DEFAULT_SST2_VARIANTS = "lora,ffa_lora,dylora"
INLINE_WORKER = "compare-inline@" + socket.gethostname()


class _Capture:
    """Keeps the in-memory TrainingResult and the variant build time of the job that is running."""

    def __init__(self) -> None:
        import studio.training.job as job_module
        import studio.training.loop as loop_module

        self.job_module, self.loop_module = job_module, loop_module
        self.original_run, self.original_create = job_module.run_training, loop_module.create_variant
        self.result: Any = None
        self.build_s: float | None = None

    def __enter__(self) -> _Capture:
        def run(*a: Any, **k: Any) -> Any:
            self.result = self.original_run(*a, **k)
            return self.result

        def create(*a: Any, **k: Any) -> Any:
            variant = self.original_create(*a, **k)
            build = variant.build

            def timed(ctx: Any) -> Any:
                started = time.perf_counter()
                model = build(ctx)
                self.build_s = time.perf_counter() - started
                return model

            variant.build = timed
            return variant

        self.job_module.run_training, self.loop_module.create_variant = run, create
        return self

    def __exit__(self, *exc: Any) -> None:
        self.job_module.run_training, self.loop_module.create_variant = self.original_run, self.original_create

    def reset(self) -> None:
        self.result, self.build_s = None, None


def _dataset(services: Any, path: Path, name: str) -> Any:
    """The registered dataset with this name and these bytes, added once per data dir."""
    import hashlib

    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    for row in services.datasets.list():
        if row.name == name and row.sha256 == digest:
            return row
    return services.datasets.add(path, name=name)


def _val_batches(
    tokenizer: Any, rows: list[dict[str, Any]], max_length: int, batch_size: int = 8
) -> list[dict[str, Any]]:
    from studio.training.data import eval_batches
    from studio.training.tokenise import encode_rows

    examples = encode_rows(rows, tokenizer, task="causal-lm", max_length=max_length).examples
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return list(eval_batches(examples, batch_size, pad))


def rank_curve(result: Any, rows: list[dict[str, Any]], ranks: list[int], max_length: int) -> dict[int, float]:
    """Held-out loss of the trained adapter at several ranks (DyLoRA natively; LoRA by naive truncation)."""
    import torch

    from studio.training.losses import evaluate

    batches = _val_batches(result.tokenizer, rows, max_length)

    def loss(model: Any) -> float:
        return evaluate(model, batches, "causal-lm").loss

    if result.variant.name == "dylora":
        from studio.variants.dylora import evaluate_over_ranks

        return evaluate_over_ranks(result.model, loss, ranks)
    # Plain LoRA: keep the first b of its r components (zero the rest of A), same alpha/r scale.
    from peft.tuners.lora import LoraLayer

    layers = [m for m in result.model.modules() if isinstance(m, LoraLayer) and "default" in m.lora_A]
    out = {}
    for b in ranks:
        saved = [layer.lora_A["default"].weight.detach().clone() for layer in layers]
        try:
            with torch.no_grad():
                for layer in layers:
                    layer.lora_A["default"].weight[b:] = 0
            out[b] = loss(result.model)
        finally:
            with torch.no_grad():
                for layer, weight in zip(layers, saved, strict=True):
                    layer.lora_A["default"].weight.copy_(weight)
    return out


def compare(
    *,
    data_dir: str | Path,
    variants: list[str],
    seeds: list[int],
    steps: int,
    batch_size: int,
    max_length: int,
    learning_rate: float,
    train_rows: int,
    max_chars: int | None,
    validation_fraction: float,
    eval_every: int,
    eval_rows: int,
    rank_checks: list[int],
    base_model: str = DEFAULT_BASE,
    train_file: str | Path | None = None,
    test_file: str | Path | None = None,
    sst2_variants: list[str] | None = None,
    sst2_steps: int = 150,
    sst2_rows: int = 2000,
    sst2_eval_rows: int = 200,
    sst2_base: str = "all-minilm-l6-v2",
    sst2_learning_rate: float = 1e-3,
    sst2_batch_size: int = 16,
    precision: str = "auto",
    reuse: list[dict[str, Any]] | None = None,
    echo: bool = True,
) -> dict[str, Any]:
    """Run every (task, variant, seed) job through the registry; returns the rows the docs and JSON hold."""
    from studio.device import detect_device
    from studio.jobs.runner import WorkerIdentity, execute_job
    from studio.schema import EvalRequest, TrainingHyperParams, TrainRequest
    from studio.services.container import build_services
    from studio.variants.registry import get_variant, params_with_preset

    settings = embedded_settings(data_dir)
    services = build_services(settings)
    registry = services.registry
    device = detect_device(settings.device)
    identity = WorkerIdentity(INLINE_WORKER, device)
    registry.worker_started(
        INLINE_WORKER,
        hostname=socket.gethostname(),
        pid=os.getpid(),
        device=device.torch_device,
        device_name=device.name,
        queue=settings.queue_name,
    )

    tmp = Path(tempfile.mkdtemp(prefix="compare-variants-"))
    train_src = read_jsonl(train_file) if train_file else alpaca_rows("train", train_rows, max_chars=max_chars)
    test_src = read_jsonl(test_file)[:eval_rows] if test_file else alpaca_rows("test", eval_rows)
    train_ds = _dataset(
        services, write_jsonl(tmp / "alpaca_train.jsonl", train_src[:train_rows]), f"alpaca-train-{train_rows}"
    )
    test_ds = _dataset(services, write_jsonl(tmp / "alpaca_test.jsonl", test_src), f"alpaca-test-{eval_rows}")
    test_canonical = read_jsonl(test_ds.stored_path)
    tasks: list[dict[str, Any]] = [
        dict(
            task="causal-lm",
            base=base_model,
            train=train_ds,
            test=test_ds,
            variants=variants,
            steps=steps,
            lr=learning_rate,
            metrics=["loss"],
        )
    ]
    if sst2_variants:
        sst_train = _dataset(
            services,
            write_jsonl(
                tmp / "sst2_train.jsonl",
                take_rows(read_jsonl(data_file("sst2", "train.jsonl")), sst2_rows, "sst2/train.jsonl"),
            ),
            f"sst2-train-{sst2_rows}",
        )
        sst_dev = _dataset(
            services,
            write_jsonl(
                tmp / "sst2_dev.jsonl",
                take_rows(read_jsonl(data_file("sst2", "dev.jsonl")), sst2_eval_rows, "sst2/dev.jsonl"),
            ),
            f"sst2-dev-{sst2_eval_rows}",
        )
        tasks.append(
            dict(
                task="classification",
                base=sst2_base,
                train=sst_train,
                test=sst_dev,
                variants=sst2_variants,
                steps=sst2_steps,
                lr=sst2_learning_rate,
                metrics=["loss", "accuracy"],
                batch=sst2_batch_size,
            )
        )

    for spec in tasks:
        spec["budget"] = {
            "base_model": spec["base"],
            "train_sha256": spec["train"].sha256,
            "test_sha256": spec["test"].sha256,
            "steps": spec["steps"],
            "batch_size": spec.get("batch", batch_size),
            "max_length": max_length,
            "learning_rate": spec["lr"],
            "validation_fraction": validation_fraction,
            "eval_every": eval_every,
            "precision": precision,
        }
    previous = {
        (r["task"], r["variant"], r["seed"]): r
        for r in (reuse or [])
        if r.get("status") == "succeeded" and r.get("budget")
    }
    runs: list[dict[str, Any]] = []
    with _Capture() as capture:
        for spec in tasks:
            for seed in seeds:
                for name in spec["variants"]:
                    done = previous.get((spec["task"], name, seed))
                    if done is not None and done["budget"] == spec["budget"]:
                        runs.append({**done, "reused": True})  # same budget and data: its registry jobs stand
                        if echo:
                            print(f"[{spec['task']}] {name} seed {seed}: reused job {done['job_id']}", flush=True)
                        continue
                    capture.reset()
                    request = TrainRequest(
                        name=f"compare {spec['task']} {name} seed {seed}",
                        dataset_id=spec["train"].id,
                        base_model=spec["base"],
                        task=spec["task"],
                        variant=name,
                        variant_params=params_with_preset(name, _small_model_preset(get_variant(name))),
                        seed=seed,
                        hyper=TrainingHyperParams(
                            max_steps=spec["steps"],
                            batch_size=spec.get("batch", batch_size),
                            max_length=max_length,
                            learning_rate=spec["lr"],
                            validation_fraction=validation_fraction,
                            log_every=1,
                            eval_every=eval_every,
                            save_every=100_000,
                            precision=precision,
                        ),
                    )
                    started = time.perf_counter()
                    job = services.jobs.submit(request)
                    status = execute_job(job.id, registry, settings, identity)
                    wall = time.perf_counter() - started
                    job = services.jobs.get(job.id)
                    run: dict[str, Any] = {
                        "budget": spec["budget"],
                        "task": spec["task"],
                        "base_model": spec["base"],
                        "variant": name,
                        "seed": seed,
                        "job_id": job.id,
                        "status": status,
                        "error": job.error,
                        "train_wall_s": wall,
                        "build_s": capture.build_s,
                    }
                    if status == "succeeded":
                        run.update(run_metrics(job, services.jobs.metrics(job.id)))
                        snaps = registry.rank_snapshots(job.id)
                        if snaps:
                            first, last = min(s.step for s in snaps), max(s.step for s in snaps)
                            run["ranks_start"] = sum(s.rank for s in snaps if s.step == first)
                            run["ranks_end"] = sum(s.rank for s in snaps if s.step == last)
                        run["modules"] = len(registry.get_adapter(run["adapter_id"]).ranks or {})
                        run["adapter_ranks_total"] = sum((registry.get_adapter(run["adapter_id"]).ranks or {}).values())
                        if spec["task"] == "causal-lm" and name in ("dylora", "lora") and capture.result is not None:
                            t0 = time.perf_counter()
                            run["rank_curve"] = rank_curve(capture.result, test_canonical, rank_checks, max_length)
                            run["rank_curve_s"] = time.perf_counter() - t0
                        capture.reset()  # free the model before the evaluation job loads its own
                        eval_job = services.jobs.submit(
                            EvalRequest(
                                adapter_id=run["adapter_id"],
                                dataset_id=spec["test"].id,
                                metrics=spec["metrics"],
                                max_examples=len(read_jsonl(spec["test"].stored_path)),
                                seed=seed,
                            )
                        )
                        t0 = time.perf_counter()
                        eval_status = execute_job(eval_job.id, registry, settings, identity)
                        eval_job = services.jobs.get(eval_job.id)
                        run["eval_job_id"] = eval_job.id
                        run["eval_job_s"] = time.perf_counter() - t0
                        run["test"] = (
                            (eval_job.result or {}).get("metrics")
                            if eval_status == "succeeded"
                            else {"error": eval_job.error}
                        )
                    runs.append(run)
                    if echo:
                        test = run.get("test") or {}
                        print(
                            f"[{spec['task']}] {name} seed {seed}: {status} in {wall:.0f} s (build {run['build_s'] or 0:.1f} s), "
                            f"final train {trailing_mean(run.get('train_loss') or [float('nan')])[-1]:.4f}, "
                            f"test {test}, load {loadavg()}",
                            flush=True,
                        )
    registry.worker_stopped(INLINE_WORKER)
    registry.dispose()
    shutil.rmtree(tmp, ignore_errors=True)  # DatasetService.add copied the files into the data dir
    return {"runs": runs, "datasets": {"train": train_ds.id, "test": test_ds.id}, "registry": settings.database_url}


# --- analysis ------------------------------------------------------------------------------------------------------


def analyse(runs: list[dict[str, Any]], rank_checks: list[int]) -> dict[str, Any]:
    """Per-variant summaries (mean over seeds) and the paper-claim checks."""
    import statistics

    ok = [r for r in runs if r["status"] == "succeeded"]
    for r in ok:  # JSON round trips turn integer keys into strings
        for key in ("eval_curve", "eval_accuracy_curve", "rank_curve"):
            if r.get(key):
                r[key] = {int(k): v for k, v in r[key].items()}
    lm = [r for r in ok if r["task"] == "causal-lm"]
    seeds = sorted({r["seed"] for r in lm})
    by_seed_lora = {r["seed"]: r for r in lm if r["variant"] == "lora"}
    for r in lm:
        lora = by_seed_lora.get(r["seed"])
        r["final_train_smoothed"] = trailing_mean(r["train_loss"])[-1]
        if lora:
            target = trailing_mean(lora["train_loss"])[-1]
            r["lora_target"] = target
            r["steps_to_lora_final"] = steps_to(r["train_loss"], target)
            if lora["eval_curve"]:
                last = max(lora["eval_curve"])
                r["lora_final_eval_step"] = last
                r["val_steps_to_lora_final"] = eval_steps_to(r["eval_curve"], lora["eval_curve"][last])

    def mean(values: list[Any]) -> float | None:
        values = [v for v in values if v is not None]
        return statistics.fmean(values) if values else None

    summary: dict[str, dict[str, Any]] = {}
    for task in ("causal-lm", "classification"):
        for r in (x for x in ok if x["task"] == task):
            key = f"{task}:{r['variant']}"
            s = summary.setdefault(key, {"task": task, "variant": r["variant"], "runs": []})
            s["runs"].append(r)
    for s in summary.values():
        rs = s.pop("runs")
        s["seeds"] = [r["seed"] for r in rs]
        s["trainable_params"] = rs[0]["trainable_params"]
        s["build_s"] = mean([r["build_s"] for r in rs])
        s["train_wall_s"] = mean([r["train_wall_s"] for r in rs])
        s["final_train_smoothed"] = mean([trailing_mean(r["train_loss"])[-1] for r in rs])
        steps_seen = sorted({int(k) for r in rs for k in r["eval_curve"]})
        s["eval_curve"] = {
            k: mean([r["eval_curve"].get(k, r["eval_curve"].get(str(k))) for r in rs]) for k in steps_seen
        }
        acc_steps = sorted({int(k) for r in rs for k in r["eval_accuracy_curve"]})
        s["eval_accuracy_curve"] = {k: mean([r["eval_accuracy_curve"].get(k) for r in rs]) for k in acc_steps}
        s["test_loss"] = mean([(r.get("test") or {}).get("eval_loss") for r in rs])
        s["test_accuracy"] = mean([(r.get("test") or {}).get("accuracy") for r in rs])
        s["steps_to_lora_final"] = [r.get("steps_to_lora_final") for r in rs]
        s["val_steps_to_lora_final"] = [r.get("val_steps_to_lora_final") for r in rs]
        s["lora_final_eval_step"] = rs[0].get("lora_final_eval_step")
        s["ranks_start"] = mean([r.get("ranks_start") for r in rs])
        s["ranks_end"] = mean([r.get("ranks_end") for r in rs])
        s["adapter_ranks_total"] = mean([r.get("adapter_ranks_total") for r in rs])
        s["modules"] = rs[0].get("modules")
        curves = [r["rank_curve"] for r in rs if r.get("rank_curve")]
        if curves:
            s["rank_curve"] = {b: mean([c.get(b) for c in curves]) for b in rank_checks}

    claims: dict[str, Any] = {}
    lora = summary.get("causal-lm:lora")
    if lora:
        for name in ("lora_ga", "lora_sb"):
            s = summary.get(f"causal-lm:{name}")
            if not s:
                continue
            ours, theirs = s["steps_to_lora_final"], lora["steps_to_lora_final"]
            val_ours, last = s["val_steps_to_lora_final"], s["lora_final_eval_step"]
            first_eval = min(s["eval_curve"]) if s["eval_curve"] else None
            # Held when validation loss reaches LoRA's final value at an earlier eval point AND the
            # smoothed training loss gets there no later than LoRA's does (every seed).
            held = all(v is not None and last is not None and v < last for v in val_ours) and all(
                a is not None and b is not None and a <= b for a, b in zip(ours, theirs, strict=False)
            )
            claims[name] = {
                "claim": "reaches a given loss in fewer steps than LoRA",
                "val_steps_to_lora_final_val_loss": val_ours,
                "lora_final_eval_step": last,
                "steps_to_lora_final_train_loss": ours,
                "lora_steps": theirs,
                "eval_at_first_point": {
                    "step": first_eval,
                    name: s["eval_curve"].get(first_eval),
                    "lora": lora["eval_curve"].get(first_eval),
                },
                "test_loss": s["test_loss"],
                "lora_test_loss": lora["test_loss"],
                "init_s": s["build_s"],
                "lora_build_s": lora["build_s"],
                "held": held,
            }
        dy = summary.get("causal-lm:dylora")
        if dy and dy.get("rank_curve") and lora.get("rank_curve"):
            top = max(rank_checks)
            dy_curve, lo_curve = dy["rank_curve"], lora["rank_curve"]
            dy_spread = max(dy_curve.values()) - dy_curve[top]
            lo_spread = max(lo_curve.values()) - lo_curve[top]
            claims["dylora"] = {
                "claim": "one adapter holds its quality when cut to smaller ranks",
                "dylora_loss_by_rank": dy_curve,
                "lora_truncated_loss_by_rank": lo_curve,
                "dylora_worst_minus_full": dy_spread,
                "lora_worst_minus_full": lo_spread,
                "held": dy_spread < lo_spread,
            }
        so = summary.get("causal-lm:sora")
        if so:
            claims["sora"] = {
                "claim": "keeps quality with fewer ranks",
                "ranks_start": so["ranks_start"],
                "ranks_end": so["ranks_end"],
                "lora_ranks_total": lora["adapter_ranks_total"],
                "test_loss": so["test_loss"],
                "lora_test_loss": lora["test_loss"],
                "held": bool(
                    so["ranks_end"] is not None
                    and so["ranks_start"]
                    and so["ranks_end"] <= 0.9 * so["ranks_start"]  # at least a tenth of the components off
                    and so["test_loss"] is not None
                    and lora["test_loss"] is not None
                    and so["test_loss"] <= lora["test_loss"] * 1.01
                ),
            }
        ffa = summary.get("causal-lm:ffa_lora")
        if ffa:
            ratio = ffa["trainable_params"] / lora["trainable_params"]
            claims["ffa_lora"] = {
                "claim": "trains half of LoRA's parameters",
                "trainable": ffa["trainable_params"],
                "lora_trainable": lora["trainable_params"],
                "ratio": ratio,
                "test_loss": ffa["test_loss"],
                "lora_test_loss": lora["test_loss"],
                "held": abs(ratio - 0.5) <= 0.05,
            }
    return {"summary": summary, "claims": claims, "seeds": seeds}


def write_markdown(path: Path, out: dict[str, Any]) -> None:
    cfg, analysis, machine = out["config"], out["analysis"], out["machine"]
    summary, claims = analysis["summary"], analysis["claims"]
    lm = [s for s in summary.values() if s["task"] == "causal-lm"]
    cls = [s for s in summary.values() if s["task"] == "classification"]
    failed = [r for r in out["runs"] if r["status"] != "succeeded"]
    eval_steps = sorted({k for s in lm for k in s["eval_curve"]})
    lora = summary.get("causal-lm:lora", {})
    chars = f", rows of at most {cfg['max_chars']} characters" if cfg["max_chars"] else ""
    lines = [
        "# Variant comparison at matched budgets (SmolLM2-135M on Alpaca; MiniLM on SST-2)",
        "",
        "Generated by `scripts/compare_variants.py`; raw curves and metrics in `bench/results/variant_comparison.json` "
        f"and in the studio registry the run used (`{out['registry']}`: job rows, per-step metrics, rank snapshots, "
        "adapters, evaluation jobs).",
        "",
        "## Set-up",
        "",
        f"- Language modelling: `{cfg['base_model']}` (fp32, CPU), {cfg['train_rows']} rows of "
        f"`shared/data/alpaca/train.jsonl` (file order{chars}); "
        f"the studio holds out {cfg['validation_fraction']:.0%} of them for the validation curve; the held-out test "
        f"loss is an evaluation job on the first {cfg['eval_rows']} rows of `alpaca/test.jsonl` (response tokens).",
        f"- Budget for every variant: {cfg['steps']} steps × batch {cfg['batch_size']}, max_length {cfg['max_length']}, "
        f"AdamW lr {cfg['learning_rate']} (warmup 3 %, linear decay), precision `{cfg.get('precision', 'auto')}`, seeds {', '.join(map(str, cfg['seeds']))}; "
        "identical batches for every variant at a given seed; each variant at its own default parameters (its `small-model` preset where it declares one). "
        f"Engine's compute for the LM runs: {_compute([r for r in out['runs'] if r['task'] == 'causal-lm'])}.",
        f"- Variants run: {', '.join(f'`{v}`' for v in cfg['variants'])}.",
    ]
    if cfg["sst2_variants"]:
        lines.append(
            f"- Classification: `{cfg['sst2_base']}` on the first {cfg['sst2_rows']} rows of `sst2/train.jsonl`, "
            f"{cfg['sst2_steps']} steps × batch {cfg['sst2_batch_size']}, lr {cfg['sst2_learning_rate']}; accuracy by an "
            f"evaluation job on the first {cfg['sst2_eval_rows']} rows of `sst2/dev.jsonl`; variants "
            f"{', '.join(f'`{v}`' for v in cfg['sst2_variants'])}."
        )
    lines += [
        f"- Machine: {machine['cpu']}, {machine['cores']} cores shared with other work (1-min loadavg at start "
        f"{out['loadavg_start']}, at end {machine['loadavg_1_5_15']}), {cfg.get('threads')} intra-op thread(s); wall "
        "times below are indicative only. Total "
        f"{out['total_s'] / 60:.1f} min.",
        f"- Command: `{_without_reuse(out['command'])}`"
        + (
            f" ({reused} runs were reused from an earlier invocation with the same data and budget via `--reuse`; "
            f"{out['total_s'] / 60:.1f} min is this invocation's time, {_job_minutes(out):.1f} min the sum of all "
            "job times)."
            if (reused := sum(1 for r in out["runs"] if r.get("reused")))
            else ""
        ),
    ]
    if cfg.get("not_run"):
        lines += [
            f"- **Not run here** (CPU budget): {', '.join(f'`{v}`' for v in cfg['not_run'])}. To run every variant: "
            f"`{_run_all_command(_without_reuse(out['command']))}`, or add the missing ones to this comparison (same data dir, the runs "
            f"above are reused): `{_extend_command(out)}` "
            "(about 2 minutes per variant on this machine, LoRA-SB longer for its 50-batch gradient init).",
        ]
    lines += [
        "",
        "## Alpaca (causal LM)",
        "",
        f"Train loss = trailing {SMOOTH}-step mean at the last step. Validation loss at steps "
        f'{", ".join(map(str, eval_steps))}. "Steps to LoRA\'s loss" = first step whose trailing mean reaches plain '
        "LoRA's final trailing mean (— = never within the budget).",
        "",
        markdown_table(
            [
                "variant",
                "r (default)",
                "trainable",
                "init s",
                "train+save s",
                "train loss",
                "val loss curve",
                "test loss",
                "steps to LoRA's loss",
            ],
            [
                [
                    f"`{s['variant']}`",
                    _default_rank(s["variant"]),
                    f"{s['trainable_params']:,}",
                    s["build_s"],
                    s["train_wall_s"],
                    round(s["final_train_smoothed"], 4),
                    _fmt_curve(s["eval_curve"]),
                    None if s["test_loss"] is None else round(s["test_loss"], 4),
                    ", ".join("—" if v is None else str(v) for v in s["steps_to_lora_final"]),
                ]
                for s in lm
            ],
        ),
        "",
        f"![Validation loss by step, one line per variant]({OVERLAY_SVG})",
        "",
        *_variant_notes({s["variant"] for s in lm}),
    ]
    if cls:
        lines += [
            "## SST-2 (classification, MiniLM)",
            "",
            markdown_table(
                ["variant", "trainable", "train loss", "dev accuracy", "dev loss", "train+save s"],
                [
                    [
                        f"`{s['variant']}`",
                        f"{s['trainable_params']:,}",
                        round(s["final_train_smoothed"], 4) if s.get("final_train_smoothed") else None,
                        s["test_accuracy"],
                        None if s["test_loss"] is None else round(s["test_loss"], 4),
                        s["train_wall_s"],
                    ]
                    for s in cls
                ],
            ),
            "",
        ]
    lines += ["## Paper claims, checked at this scale", ""]
    for name in ("lora_ga", "lora_sb"):
        c = claims.get(name)
        if not c:
            continue
        e = c["eval_at_first_point"]
        lines.append(
            f"- **{_title(name)} {c['claim']}: {'held' if c['held'] else 'did not hold'} here.** Its validation loss "
            f"reached LoRA's final (step {c['lora_final_eval_step']}) value at step "
            f"{_steps(c['val_steps_to_lora_final_val_loss'])}; validation loss at step {e['step']}: {_r(e[name])} vs LoRA "
            f"{_r(e['lora'])}. Its smoothed training loss reached LoRA's final value at step "
            f"{_steps(c['steps_to_lora_final_train_loss'])} vs LoRA's own {_steps(c['lora_steps'])} (of {cfg['steps']}; "
            f"noisy, one batch per step). Test loss {_r(c['test_loss'])} vs {_r(c['lora_test_loss'])}. The price is its "
            f"initialisation: {_r(c['init_s'], 1)} s before step 1 (LoRA's wrap {_r(c['lora_build_s'], 1)} s; one "
            f"training step here takes about {_step_seconds(out, 'lora'):.1f} s)."
        )
    c = claims.get("dylora")
    if c:
        lines.append(
            f"- **DyLoRA {c['claim']}: {'held' if c['held'] else 'did not hold'} here.** Loss of the trained DyLoRA adapter "
            f"on the same {cfg['eval_rows']} test rows (cut at max_length {cfg['max_length']} and scored in memory with the "
            f"engine's `evaluate`, hence slightly below the evaluation jobs' untruncated test loss) at ranks "
            f"{', '.join(map(str, c['dylora_loss_by_rank']))}: {_fmt_curve(c['dylora_loss_by_rank'])} (worst minus full "
            f"rank {c['dylora_worst_minus_full']:+.3f}); plain LoRA with only its first b components kept: "
            f"{_fmt_curve(c['lora_truncated_loss_by_rank'])} ({c['lora_worst_minus_full']:+.3f}). Rank-8 DyLoRA vs rank-8 LoRA "
            f"test loss: {_r(summary['causal-lm:dylora']['test_loss'])} vs {_r(lora.get('test_loss'))}."
        )
    c = claims.get("sora")
    if c:
        lines.append(
            f"- **SoRA {c['claim']}: {'held' if c['held'] else 'not shown'} here.** Active ranks (sum over modules) "
            f"{_r(c['ranks_start'], 0)} at the start → {_r(c['ranks_end'], 0)} after {cfg['steps']} steps (LoRA: "
            f"{_r(c['lora_ranks_total'], 0)}); test loss {_r(c['test_loss'])} vs LoRA {_r(c['lora_test_loss'])}."
            + (
                ""
                if c["held"]
                else " Fewer than a tenth of the rank components were switched off at this budget (SoRA's official lr is "
                "8e-4, here every variant trains at the same lr), so the claim is neither confirmed nor refuted here."
            )
            + " The sparsifying-scheduler run in [sora_stages.md](sora_stages.md) checks it with SoRA's own lr and a "
            "rising threshold: quality per stage against the rank components still on."
        )
    c = claims.get("ffa_lora")
    if c:
        lines.append(
            f"- **FFA-LoRA {c['claim']}: {'held' if c['held'] else 'only approximately'} here.** {c['trainable']:,} trainable "
            f"vs LoRA {c['lora_trainable']:,} = {c['ratio']:.3f}× (exactly half only where a layer's input and output widths "
            f"match: with frozen A it trains B, out × r). Test loss {_r(c['test_loss'])} vs LoRA {_r(c['lora_test_loss'])}."
        )
    lines += [
        "",
        f"{cfg['steps']} steps on {cfg['train_rows']} rows with one seed is a smoke-scale comparison: loss differences "
        "of a few hundredths are within seed noise and say nothing about the papers' full-scale results.",
        "",
    ]
    if failed:
        lines += (
            ["## Failed runs", ""]
            + [f"- `{r['variant']}` ({r['task']}, seed {r['seed']}): {r['error']}" for r in failed]
            + [""]
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    # The convergence overlay of the LM runs (the same chart a sweep in compare mode shows).
    (path.parent / OVERLAY_SVG).write_text(overlay_svg(lm, title="Validation loss (Alpaca)"), encoding="utf-8")


OVERLAY_SVG = "variant_comparison_overlay.svg"


def _small_model_preset(cls: Any) -> str | None:
    """The variant's `small-model` preset, if it declares one: every base model here has ~100M parameters."""
    return "small-model" if any(preset.name == "small-model" for preset in cls.presets) else None


# What a reader needs to read some rows of the table right (only for variants that ran).
VARIANT_NOTES = {
    "loraprune": "`loraprune` is a pruning method: its cubic schedule removes half of the prunable attention heads "
    "and MLP channels (p_f = 0.5) within these 30 steps, so its loss is that of a model cut in half that had no "
    "time to recover, not an adapter's quality.",
    "adalora": "`adalora`, `increlora` and `s2_lora` barely move at this budget: AdaLoRA and IncreLoRA start with "
    "small or masked ranks and allocate over hundreds of steps, S2-LoRA trains 26k shared parameters.",
    "nlora": "`nlora` and `inttune` run with their `small-model` preset: `residual=True` (the model starts at the "
    "base) and NLoRA with `lr_scale=0.1` (its W0-sliced factors at 0.1× the run's lr); with the official init "
    "(`residual=False`) the loss started near 17, and at the run's full lr NLoRA's validation loss rose to 2.61 "
    "(docs/variants/nlora.md).",
}


def _variant_notes(variants: set[str]) -> list[str]:
    notes = [text for name, text in VARIANT_NOTES.items() if name in variants]
    return [*(f"- {text}" for text in notes), ""] if notes else []


def _per_variant_minutes(out: dict[str, Any]) -> str:
    walls = [
        r["train_wall_s"] + r.get("eval_job_s", 0)
        for r in out["runs"]
        if r["task"] == "causal-lm" and r["status"] == "succeeded"
    ]
    return f"{sum(walls) / len(walls) / 60:.1f}" if walls else "?"


def _without_reuse(command: str) -> str:
    words = command.split()
    out = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word == "--reuse":
            skip = True
        elif not word.startswith("--reuse="):
            out.append(word)
    return " ".join(out)


def _job_minutes(out: dict[str, Any]) -> float:
    return sum(r.get("train_wall_s", 0) + r.get("eval_job_s", 0) for r in out["runs"]) / 60


def _extend_command(out: dict[str, Any]) -> str:
    base = _run_all_command(_without_reuse(out["command"])).rsplit(" --data-dir", 1)[0]
    data_dir = out["registry"].removeprefix("sqlite:///").rsplit("/", 1)[0]
    return f"{base} --data-dir {data_dir} --variants all --reuse bench/results/variant_comparison.json"


def _run_all_command(command: str) -> str:
    """The documented command with every variant (and a fresh data dir)."""
    words, out, skip = command.split(), [], False
    for word in words:
        if skip:
            skip = False
            continue
        if word in ("--variants", "--data-dir"):
            skip = True
            continue
        if word.startswith(("--variants=", "--data-dir=")):
            continue
        out.append(word)
    return " ".join([*out, "--data-dir", "/tmp/compare-all", "--variants", "all"])


def _compute(runs: list[dict[str, Any]]) -> str:
    setup = next((r.get("training_setup") for r in runs if r.get("training_setup")), None)
    if not setup:
        return "not recorded"
    precision = (setup.get("precision") or {}).get("precision", "fp32")
    checkpointing = "gradient checkpointing" if setup.get("gradient_checkpointing") else "no checkpointing"
    return f"{precision}, {checkpointing}, loss {setup.get('loss')}"


def _step_seconds(out: dict[str, Any], variant: str) -> float:
    """Rough seconds per training step of ``variant`` (its job wall time over its steps, incl. set-up and saving)."""
    runs = [
        r for r in out["runs"] if r["variant"] == variant and r["task"] == "causal-lm" and r["status"] == "succeeded"
    ]
    if not runs:
        return float("nan")
    return sum(r["train_wall_s"] for r in runs) / len(runs) / out["config"]["steps"]


def _default_rank(name: str) -> Any:
    from studio.variants.registry import get_variant

    return get_variant(name).Params.model_fields["r"].default


def _title(name: str) -> str:
    from studio.variants.registry import get_variant

    return get_variant(name).title.split(" (")[0]


def _r(value: Any, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _steps(values: list[int | None]) -> str:
    return ", ".join("never" if v is None else str(v) for v in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="Studio data dir holding the registry of this comparison.")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="Comma-separated names, or 'all'.")
    parser.add_argument("--sst2-variants", default=DEFAULT_SST2_VARIANTS, help="Comma-separated; empty to skip SST-2.")
    parser.add_argument("--seeds", default="42", help="Comma-separated seeds.")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--train-rows", type=int, default=200)
    parser.add_argument("--max-chars", type=int, default=400)
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-rows", type=int, default=32, help="alpaca/test rows scored by each evaluation job.")
    parser.add_argument(
        "--rank-checks", default="1,2,4,8", help="Ranks at which the DyLoRA (and LoRA) adapters are scored."
    )
    parser.add_argument("--sst2-steps", type=int, default=150)
    parser.add_argument("--sst2-rows", type=int, default=2000)
    parser.add_argument("--sst2-eval-rows", type=int, default=200)
    parser.add_argument("--sst2-learning-rate", type=float, default=1e-3)
    parser.add_argument("--sst2-batch-size", type=int, default=16)
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="Every request's precision."
    )
    parser.add_argument("--base-model", default=DEFAULT_BASE)
    add_threads_argument(parser)
    add_data_argument(parser)
    parser.add_argument(
        "--reuse",
        default=None,
        help="An earlier results JSON: its runs with the same task, variant, seed, data and budget are kept instead "
        "of retrained (use the same --data-dir so their registry jobs are there too).",
    )
    parser.add_argument("--out", default=str(RESULTS_DIR / "variant_comparison.json"))
    parser.add_argument("--doc", default=str(DOCS_RESULTS_DIR / "variant_comparison.md"))
    args = parser.parse_args(argv)
    use_data(args.data)
    prepare_env(threads=args.threads)
    from studio.variants.registry import variant_names

    every = variant_names()
    variants = every if args.variants == "all" else [v.strip() for v in args.variants.split(",") if v.strip()]
    if "lora" not in variants:
        variants = ["lora", *variants]  # the reference of every ratio and claim
    sst2 = [v.strip() for v in args.sst2_variants.split(",") if v.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    ranks = [int(b) for b in args.rank_checks.split(",") if b.strip()]
    load_start = loadavg()
    started = time.perf_counter()
    result = compare(
        data_dir=args.data_dir,
        variants=variants,
        seeds=seeds,
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        learning_rate=args.learning_rate,
        train_rows=args.train_rows,
        max_chars=args.max_chars,
        validation_fraction=args.validation_fraction,
        eval_every=args.eval_every,
        eval_rows=args.eval_rows,
        rank_checks=ranks,
        base_model=args.base_model,
        sst2_variants=sst2,
        sst2_steps=args.sst2_steps,
        sst2_rows=args.sst2_rows,
        sst2_eval_rows=args.sst2_eval_rows,
        sst2_learning_rate=args.sst2_learning_rate,
        sst2_batch_size=args.sst2_batch_size,
        precision=args.precision,
        reuse=json.loads(Path(args.reuse).read_text())["runs"] if args.reuse else None,
    )
    out = {
        "script": "compare_variants",
        "command": "python scripts/compare_variants.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {
            "base_model": args.base_model,
            "variants": variants,
            "not_run": [v for v in every if v not in variants],
            "sst2_variants": sst2,
            "seeds": seeds,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "learning_rate": args.learning_rate,
            "train_rows": args.train_rows,
            "max_chars": args.max_chars,
            "validation_fraction": args.validation_fraction,
            "eval_every": args.eval_every,
            "eval_rows": args.eval_rows,
            "rank_checks": ranks,
            "sst2_base": "all-minilm-l6-v2",
            "sst2_steps": args.sst2_steps,
            "sst2_rows": args.sst2_rows,
            "sst2_eval_rows": args.sst2_eval_rows,
            "sst2_learning_rate": args.sst2_learning_rate,
            "sst2_batch_size": args.sst2_batch_size,
            "precision": args.precision,
            "threads": args.threads,
        },
        "loadavg_start": load_start,
        "total_s": time.perf_counter() - started,
        "registry": result["registry"],
        "runs": result["runs"],
        "analysis": analyse(result["runs"], ranks),
        "machine": machine_info(),
    }
    write_json(args.out, out)
    write_markdown(Path(args.doc), out)
    for name, claim in out["analysis"]["claims"].items():
        print(f"{name}: {claim['claim']}: {'held' if claim['held'] else 'not held'}")
    print(f"wrote {args.out} and {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
