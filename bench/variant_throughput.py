"""Training throughput and peak memory of every registered variant, as a ratio to plain LoRA in the same run.

Issue "training jobs" item 9 + research-variants item 6. Each variant trains in its own
Python subprocess (so its peak RSS — VmHWM from /proc — is its own) through the studio's
engine, ``studio.training.loop.run_training``, with the variant's DEFAULT parameters on the
same Alpaca rows, seed, batch size and max length. Per variant it records:

* ``build_s`` — time of ``variant.build`` (PEFT wrap plus any initialisation pass: SVD for
  PiSSA/LoRA-XS/MiSS…, gradient batches for LoRA-GA and LoRA-SB, activation SVD for EVA);
* ``first_step_s`` — optimizer set-up plus the first step (warm-up, excluded from the rate);
* ``tokens_per_s`` — tokens of steps 2..N over their wall time, and the median per-step
  rate (robust when other processes share the CPU);
* ``peak_rss_mb`` — the subprocess's VmHWM (process-wide: model, data, init pass, training);
* which training-time hooks the variant overrides (extra work every step: importance
  scores, gate updates, rank growth, orthogonality penalties, ...).

Plain LoRA runs first and again last; ratios use the mean of those two LoRA runs so that
drifting machine load hits both ends. Target: ratio >= 0.85 for variants without extra passes.

    python bench/variant_throughput.py                              # all variants, 4 steps
    python bench/variant_throughput.py --variants lora,dora,sora --steps 10

Writes bench/results/variant_throughput.json and docs/results/variant_throughput.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    DEFAULT_BASE,
    TimingReporter,
    add_run_arguments,
    alpaca_canonical,
    alpaca_rows,
    loadavg,
    machine_info,
    markdown_table,
    peak_rss_mb,
    resolve_base,
    rss_mb,
    run_child,
    start_run,
    step_tokens_of,
    text_table,
    worker_device,
    write_json,
    write_jsonl,
)

TRAINING_HOOKS = ("configure_optimization", "on_step_begin", "extra_loss", "on_pre_optimizer_step", "on_optimizer_step")

# What each variant does beyond a plain LoRA step (from the variant modules; "init" = once in build()).
EXTRA_WORK = {
    "dora": "every forward: the norm of each column of W0 + s·BA (PEFT's DoRA; no extra pass, inherent cost)",
    "pissa": "init: SVD of each target weight",
    "olora": "init: QR of each target weight",
    "adalora": "every step: orthogonality penalty, importance scores, rank budget",
    "lora_ga": "init: gradients of calibration batches (default 8) + SVD",
    "eva": "init: forward passes over calibration batches (default 16) + incremental SVD of layer inputs",
    "miss": "init: none beyond the wrap (block-shared shards)",
    "lora_xs": "init: truncated SVD of each target weight",
    "lora_sb": "init: full-model gradients of grad_samples batches (default 50) + SVD",
    "slora": "init: none (small middle matrix)",
    "nlora": "init: slices of each weight (cheap)",
    "inttune": "init: slices of each weight (cheap; only the middle matrix trains)",
    "dylora": "every step: draws a rank b, trains the b-th slice",
    "allora": "every step: per-row adaptive step (gradient rescale)",
    "sora": "every step: L1 gate penalty + proximal gate threshold",
    "increlora": "every step: importance scores from gradients; rank grows on schedule",
    "s2_lora": "every step: sparsity penalty on per-layer weights",
    "loraprune": "every step: LoRA-gradient importance of heads/channels; periodic pruning",
}
INIT_PASS = {"pissa", "olora", "lora_ga", "eva", "lora_xs", "lora_sb"}  # measurable work in build()


def training_hooks(name: str) -> list[str]:
    """The training-time hooks variant ``name`` overrides (each is per-step work a plain LoRA does not do)."""
    from studio.variants.base import Variant
    from studio.variants.registry import get_variant

    cls = get_variant(name)
    return [h for h in TRAINING_HOOKS if getattr(cls, h) is not getattr(Variant, h)]


def measure_variant(
    name: str,
    *,
    data_path: str | Path,
    base_path: str | Path,
    steps: int,
    batch_size: int,
    max_length: int,
    seed: int = 42,
    params: dict[str, Any] | None = None,
    work_dir: str | Path | None = None,
    base_model: str = DEFAULT_BASE,
    precision: str = "auto",
) -> dict[str, Any]:
    """Train ``name`` for ``steps`` steps in THIS process; returns timings, rates, memory and losses."""
    import studio.training.loop as loop
    from studio.schema import TrainingHyperParams, TrainRequest
    from studio.training.setup import TrainingData

    captured: dict[str, Any] = {}
    original_prepare, original_create = loop.prepare_run, loop.create_variant

    def prepare(*a: Any, **k: Any) -> Any:
        started = time.perf_counter()
        captured["setup"] = original_prepare(*a, **k)
        captured["prepare_s"] = time.perf_counter() - started
        captured["rss_after_load_mb"] = rss_mb()
        return captured["setup"]

    def create(*a: Any, **k: Any) -> Any:
        variant = original_create(*a, **k)
        build = variant.build

        def timed_build(ctx: Any) -> Any:
            started = time.perf_counter()
            model = build(ctx)
            captured["build_end"] = time.perf_counter()
            captured["build_s"] = captured["build_end"] - started
            return model

        variant.build = timed_build
        return variant

    request = TrainRequest(
        dataset_id=1,
        base_model=base_model,
        variant=name,
        variant_params=params or {},
        seed=seed,
        hyper=TrainingHyperParams(
            max_steps=steps,
            batch_size=batch_size,
            max_length=max_length,
            validation_fraction=0.0,
            eval_every=100_000,
            save_every=100_000,
            precision=precision,
        ),
    )
    reporter = TimingReporter()
    loop.prepare_run, loop.create_variant = prepare, create
    try:
        with tempfile.TemporaryDirectory(prefix=f"vt-{name}-") as tmp:
            started = time.perf_counter()
            result = loop.run_training(
                request,
                reporter,
                settings=None,
                device=worker_device(),
                work_dir=Path(work_dir or tmp),
                dataset=TrainingData(path=Path(data_path), name="alpaca"),
                base_path=Path(base_path),
            )
            total_s = time.perf_counter() - started
    finally:
        loop.prepare_run, loop.create_variant = original_prepare, original_create
    tokens = step_tokens_of(captured["setup"], steps, request.hyper.grad_accum)
    times = reporter.step_times
    per_step = [tokens[k - 1] / (times[k] - times[k - 1]) for k in range(2, steps + 1)]
    steady_s = times[steps] - times[1] if steps > 1 else times[1] - captured["build_end"]
    steady_tokens = sum(tokens[1:]) if steps > 1 else tokens[0]
    cpu = reporter.cpu_times
    steady_cpu = cpu[steps] - cpu[1] if steps > 1 else None
    return {
        "variant": name,
        "params": result.variant.params.model_dump(mode="json"),
        "trainable_params": result.trainable_params,
        "prepare_s": captured["prepare_s"],
        "build_s": captured["build_s"],
        "first_step_s": times[1] - captured["build_end"],
        "steady_s": steady_s,
        "tokens_per_s": steady_tokens / steady_s,
        "median_step_tokens_per_s": statistics.median(per_step) if per_step else steady_tokens / steady_s,
        "tokens_per_cpu_s": steady_tokens / steady_cpu if steady_cpu else None,
        "tokens_per_step": tokens,
        "losses": [result.losses[k] for k in sorted(result.losses)],
        "rss_after_load_mb": captured["rss_after_load_mb"],
        "peak_rss_mb": peak_rss_mb(),
        "total_s": total_s,
        "hooks": training_hooks(name),
        "training_setup": _training_setup(result, request),
    }


def _training_setup(result: Any, request: Any) -> dict[str, Any] | None:
    """How the engine computed (precision, checkpointing, loss), when the engine records it."""
    describe = getattr(result, "training_setup", None)
    if describe is None:
        return None
    setup = describe(request.hyper)
    return {
        k: setup.get(k) for k in ("precision", "gradient_checkpointing", "micro_batch_size", "loss", "group_by_length")
    }


def _child(spec_json: str) -> None:
    spec = json.loads(spec_json)
    print(json.dumps(measure_variant(spec.pop("name"), **spec)))


def parse_entry(entry: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:key=value;key=value`` (values parsed as JSON when they parse) -> (name, params)."""
    name, _, rest = entry.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(";")):
        key, _, raw = item.partition("=")
        try:
            params[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            params[key.strip()] = raw
    return name.strip(), params


def run_all(
    variants: list[str],
    *,
    data_path: Path,
    base_path: Path,
    steps: int,
    batch_size: int,
    max_length: int,
    seed: int,
    timeout: float,
    precision: str = "auto",
    echo: bool = True,
) -> list[dict[str, Any]]:
    """Every variant in its own subprocess; plain LoRA (defaults) first and last.

    An entry may carry parameters (``slora:r=8``); its label is the entry itself.
    """
    order = ["lora", *[v for v in variants if v != "lora"], "lora"]
    out = []
    for label in order:
        name, params = parse_entry(label)
        spec = dict(
            name=name,
            params=params,
            data_path=str(data_path),
            base_path=str(base_path),
            steps=steps,
            batch_size=batch_size,
            max_length=max_length,
            seed=seed,
            precision=precision,
        )
        load = loadavg()
        started = time.perf_counter()
        row = run_child([str(Path(__file__).resolve()), "--child", json.dumps(spec)], timeout=timeout)
        row["variant"], row["label"], row["overrides"] = name, label, params
        row["process_s"] = time.perf_counter() - started
        row["loadavg_before"] = load
        out.append(row)
        if echo:
            if "error" in row:
                print(f"{label}: FAILED {row['error']}\n{row.get('stderr_tail', '')[-1500:]}", flush=True)
            else:
                print(
                    f"{label}: {row['tokens_per_s']:.1f} tok/s (median step {row['median_step_tokens_per_s']:.1f}), "
                    f"build {row['build_s']:.1f} s, peak {row['peak_rss_mb']:.0f} MiB, load {load}",
                    flush=True,
                )
    return out


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per variant with ratios to the mean of the plain-LoRA runs."""
    lora = [r for r in rows if r.get("label", r["variant"]) == "lora" and "error" not in r]
    ref_tps = statistics.fmean(r["tokens_per_s"] for r in lora)
    ref_med = statistics.fmean(r["median_step_tokens_per_s"] for r in lora)
    ref_mem = statistics.fmean(r["peak_rss_mb"] for r in lora)
    cpu_refs = [r["tokens_per_cpu_s"] for r in lora if r.get("tokens_per_cpu_s")]
    ref_cpu = statistics.fmean(cpu_refs) if cpu_refs else None
    ref_build = statistics.fmean(r["build_s"] for r in lora)
    table, seen = [], set()
    for row in rows:
        name, label = row["variant"], row.get("label", row["variant"])
        if label in seen:
            continue
        seen.add(label)
        if "error" in row:
            table.append({"variant": label, "error": row["error"]})
            continue
        if label == "lora":
            tps, med, mem, build, cpu = ref_tps, ref_med, ref_mem, ref_build, ref_cpu
        else:
            tps, med, mem, build = (
                row["tokens_per_s"],
                row["median_step_tokens_per_s"],
                row["peak_rss_mb"],
                row["build_s"],
            )
            cpu = row.get("tokens_per_cpu_s")
        cpu_ratio = cpu / ref_cpu if cpu and ref_cpu else None
        extra = name in INIT_PASS or bool(set(row["hooks"]) - {"configure_optimization"})
        table.append(
            {
                "variant": label,
                "trainable_params": row["trainable_params"],
                "r": row["params"].get("r"),
                "lora_dropout": row["params"].get("lora_dropout"),
                "tokens_per_s": tps,
                "ratio_tokens_per_s": tps / ref_tps,
                "median_step_tokens_per_s": med,
                "ratio_median_step": med / ref_med,
                "tokens_per_cpu_s": cpu,
                "ratio_tokens_per_cpu_s": cpu_ratio,
                "peak_rss_mb": mem,
                "ratio_peak_rss": mem / ref_mem,
                "build_s": build,
                "init_extra_s": max(0.0, build - ref_build) if label != "lora" else 0.0,
                "hooks": row["hooks"],
                "extra_work": EXTRA_WORK.get(name, ""),
                "extra_pass": extra,
                "meets_target": None if extra else bool(max(tps / ref_tps, med / ref_med, cpu_ratio or 0) >= 0.85),
            }
        )
    return table


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    cfg, table = result["config"], result["table"]
    headers = [
        "variant",
        "r",
        "dropout",
        "trainable",
        "tok/s",
        "÷LoRA",
        "median-step ÷LoRA",
        "tok/CPU-s ÷LoRA",
        "peak MiB",
        "÷LoRA",
        "build s",
        "extra work",
    ]
    rows = []
    for t in table:
        if "error" in t:
            rows.append([t["variant"], "", "", "", "failed", "", "", "", "", "", "", t["error"]])
            continue
        rows.append(
            [
                f"`{t['variant']}`",
                t["r"],
                t.get("lora_dropout"),
                f"{t['trainable_params']:,}",
                t["tokens_per_s"],
                t["ratio_tokens_per_s"],
                t["ratio_median_step"],
                t["ratio_tokens_per_cpu_s"],
                t["peak_rss_mb"],
                t["ratio_peak_rss"],
                t["build_s"],
                t["extra_work"] or "—",
            ]
        )
    plain = [t for t in table if "error" not in t and not t["extra_pass"] and t["variant"] != "lora"]
    below = [t["variant"] for t in plain if not t["meets_target"]]
    extra = [t for t in table if "error" not in t and t["extra_pass"]]
    lora_runs = [r for r in result["runs"] if r["variant"] == "lora" and "error" not in r]
    m = result["machine"]
    lora_rates = ", ".join(f"{r['tokens_per_s']:.1f}" for r in lora_runs)
    overrides = any(r.get("overrides") for r in result["runs"])
    title = "Variant throughput with parameter overrides" if overrides else "Variant throughput and memory"
    lines = [
        f"# {title} (SmolLM2-135M, CPU)",
        "",
        "Generated by `bench/variant_throughput.py`; raw numbers in `bench/results/variant_throughput.json`.",
        "",
        f"- Model: `{cfg['base_model']}` (fp32 weights, {m['cpu']}, {m['cores']} cores, torch {m['versions']['torch']} "
        f"with {cfg.get('threads')} intra-op thread(s) per process: OMP_NUM_THREADS; two threads collapse on this "
        "oversubscribed machine, see `bench/common.prepare_env`).",
        f"- Data: first {cfg['rows']} rows of `shared/data/alpaca/train.jsonl` (canonical chat rows, response-only loss).",
        f"- Each variant: its own subprocess, default parameters, {cfg['steps']} steps of batch {cfg['batch_size']}, "
        f"max_length {cfg['max_length']}, seed {cfg['seed']}, precision `{cfg.get('precision', 'auto')}` "
        f"(engine's choice: {_compute(result)}); rate = tokens of steps 2..{cfg['steps']} / their wall time.",
        f"- Plain LoRA ran first and last ({lora_rates} tok/s); "
        'ratios are to their mean. "median-step" is the median per-step rate; "tok/CPU-s" is tokens per CPU-second '
        "of the process (steps 2..N) — both less sensitive to other people's load than the wall-clock rate.",
        f"- Machine load (1-min loadavg) at start {result['loadavg_start']}, at end {m['loadavg_1_5_15']}: this is a "
        "2-core machine shared with other work, so single numbers carry roughly ±10-20 % noise; ratios from one "
        "run are comparable, small differences are not significant.",
        f"- Command: `{result['command']}`",
        "",
        markdown_table(headers, rows),
        "",
        "Peak memory is the process-wide VmHWM (Python + torch + the fp32 model + data + init pass + training), "
        "so differences between variants are small relative to the whole.",
        "",
        "Reading the table: every variant runs at its own defaults, so rank and dropout differ. Plain LoRA's default "
        "`lora_dropout` is 0.05 — PEFT then runs each adapted layer's input through a dropout copy — while DyLoRA, "
        "SoRA, ALLoRA, MiSS, PiSSA and LoRA-XS/SB default to 0. SLoRA and NLoRA default to r = 128 (about 17× "
        "LoRA's trainable parameters), so their rate is not a like-for-like overhead figure. Entries with "
        "parameters (`lora:lora_dropout=0`, `slora:r=8`) separate these effects; "
        "`docs/results/variant_throughput_matched.md` holds such a run. DoRA's cost is inherent: every forward "
        "recomputes the norm of each column of W0 + s·BA.",
        "",
        "## Against the target (≥ 0.85 × LoRA for variants without extra passes)",
        "",
    ]
    if plain:
        ok = [t["variant"] for t in plain if t["meets_target"]]
        lines.append(
            f"Variants without an init pass or per-step hooks: {', '.join(f'`{v}`' for v in ok) or 'none'} meet it"
            + (f"; below it: {', '.join(f'`{v}`' for v in below)}." if below else ".")
            + " (A variant meets the target when its wall-clock, median-step or CPU-time ratio is ≥ 0.85: on a "
            "shared machine one noisy measure must not fail a variant.)"
        )
    if extra:
        lines += _extra_section(extra, lora_runs)
    lines += [
        "",
        "Init time is measured around `variant.build` (PEFT wrap + initialisation); per-step hooks are inside the "
        "training rate. Variants whose default rank differs from LoRA's r=8 (EVA 16, MiSS 16, LoRA-XS 64, LoRA-SB 96, "
        "SLoRA/NLoRA/IntTune 128, IncreLoRA starting at 1) are measured at those defaults unless an entry overrides "
        "them — what a user gets without changing anything.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


def _extra_section(extra: list[dict[str, Any]], lora_runs: list[dict[str, Any]]) -> list[str]:
    return [
        "",
        "## Variants with extra passes (documented, no target)",
        "",
        markdown_table(
            [
                "variant",
                "extra work",
                f"build s (LoRA: {statistics.fmean(r['build_s'] for r in lora_runs):.1f})",
                "init beyond LoRA s",
                "tok/s ÷LoRA",
                "tok/CPU-s ÷LoRA",
            ],
            [
                [
                    f"`{t['variant']}`",
                    t["extra_work"] or ", ".join(t["hooks"]),
                    t["build_s"],
                    t["init_extra_s"],
                    t["ratio_tokens_per_s"],
                    t["ratio_tokens_per_cpu_s"],
                ]
                for t in extra
            ],
        ),
    ]


def _compute(result: dict[str, Any]) -> str:
    """How the engine computed the plain-LoRA runs (precision, checkpointing, loss), from their records."""
    lora = next((r for r in result["runs"] if r.get("variant") == "lora" and r.get("training_setup")), None)
    if lora is None:
        return "not recorded"
    setup = lora["training_setup"]
    precision = (setup.get("precision") or {}).get("precision", "fp32")
    checkpointing = "gradient checkpointing" if setup.get("gradient_checkpointing") else "no checkpointing"
    return f"{precision}, {checkpointing}, loss {setup.get('loss')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants",
        default="all",
        help="Comma-separated names, or 'all'; an entry may set parameters: 'slora:r=8;lora_alpha=16'.",
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="The request's precision."
    )
    parser.add_argument("--base-model", default=DEFAULT_BASE)
    add_run_arguments(parser, out="variant_throughput.json", doc="variant_throughput.md")
    parser.add_argument("--timeout", type=float, default=900, help="Seconds per variant subprocess.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    start_run(args)
    if args.child:
        _child(args.child)
        return 0
    from studio.variants.registry import get_variant, variant_names

    names = variant_names() if args.variants == "all" else [v.strip() for v in args.variants.split(",") if v.strip()]
    for entry in names:
        get_variant(parse_entry(entry)[0])  # unknown names fail now, not after minutes of training
    load_start = loadavg()
    base_path = resolve_base(args.base_model)
    with tempfile.TemporaryDirectory(prefix="variant-throughput-") as tmp:
        data = write_jsonl(Path(tmp) / "alpaca.jsonl", [alpaca_canonical(r) for r in alpaca_rows("train", args.rows)])
        runs = run_all(
            names,
            data_path=data,
            base_path=base_path,
            steps=args.steps,
            batch_size=args.batch_size,
            max_length=args.max_length,
            seed=args.seed,
            timeout=args.timeout,
            precision=args.precision,
        )
    table = summarise(runs)
    result = {
        "bench": "variant_throughput",
        "command": "python bench/variant_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {
            "base_model": args.base_model,
            "rows": args.rows,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "seed": args.seed,
            "precision": args.precision,
            "threads": args.threads,
            "variants": names,
        },
        "loadavg_start": load_start,
        "table": table,
        "runs": runs,
        "machine": machine_info(),
    }
    write_json(args.out, result)
    write_markdown(Path(args.doc), result)
    print(
        text_table(
            ["variant", "tok/s", "÷LoRA", "median ÷LoRA", "CPU ÷LoRA", "peak MiB", "÷LoRA", "build s", "extra pass"],
            [
                [
                    t["variant"],
                    t.get("tokens_per_s"),
                    t.get("ratio_tokens_per_s"),
                    t.get("ratio_median_step"),
                    t.get("ratio_tokens_per_cpu_s"),
                    t.get("peak_rss_mb"),
                    t.get("ratio_peak_rss"),
                    t.get("build_s"),
                    t.get("extra_pass", t.get("error")),
                ]
                for t in table
            ],
        )
    )
    print(f"wrote {args.out} and {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
