"""Serving benchmark on a real base model (issue 12, item 6 (a) and (b)): many LoRA adapters, one batch.

Base: the bundled SmolLM2-135M (``--model``, resolved by studio.models.base_models), fp32,
CPU. Prompts: Alpaca instructions from the data folder (``--data``, default the in-repo
samples) rendered with the model's chat template. Every request is greedy and generates
exactly ``--new`` tokens (end-of-sequence is switched off on both sides, as throughput
benches do, so every contender does the same work).

**(a) mixed adapters** — ``--requests`` (8) requests, each on its own random LoRA adapter
(ranks mixed 4–64, every attention and MLP projection, saved by PEFT as real adapter
directories). Measured in one process, interleaved over ``--repeats``, median:

* ``engine_mixed`` — ``ServingEngine.generate`` on all requests, each row on its adapter;
* ``engine_one`` — the same requests all on one adapter (rank 16) through the same engine;
* ``engine_base`` — the same requests with no adapter (what the LoRA terms cost);
* ``peft_sequential`` — one PeftModel holding every adapter, ``set_adapter`` + ``generate`` per request;
* ``peft_batched`` — the same PeftModel, one left-padded ``generate(adapter_names=[...])``.

Targets: engine_mixed ≥ 0.7× engine_one, ≥ 3× peft_sequential, ≥ 1.5× peft_batched.
Tokens are compared with peft_sequential (greedy, fp32: they should agree; the count is reported).

**(b) many registered adapters** — 1, 8, 64 and 512 adapters (``--counts``) of a tiny rank
(``--scale-rank``, every projection, written straight to disk in PEFT's format), 8 active per
batch: round k asks for adapters 8k..8k+7 of the set (mod its size), so with more adapters
than slots every round pages adapters in from host RAM or disk. Each count runs in its own
process (so its RSS is its own), counts interleaved over ``--scale-repeats``; reported:
tokens/s vs the 1-adapter case (target ≥ 0.9×) and RSS growth over the loaded model, next
to the bank's slot memory and the host cache (``host_capacity`` adapters, LRU).

    python bench/serving.py                      # the full run, ~10 min on 2 busy cores
    python bench/serving.py --quick              # smoke run, ~1 min
    python bench/serving.py --skip-scale         # (a) only

Writes bench/results/serving.json and prints tables. Part (c), the HTTP load generator,
is bench/serving_http.py.
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

from bench import common  # noqa: E402
from bench.common import (  # noqa: E402
    DEFAULT_BASE,
    RESULTS_DIR,
    add_data_argument,
    add_threads_argument,
    machine_info,
    prepare_env,
    rss_mb,
    run_child,
    text_table,
    use_data,
    write_json,
)
from bench.serving_engine import TARGETS, load  # noqa: E402

# Mixed ranks for part (a), in an order that puts small and large ranks side by side in the batch.
RANKS = [4, 64, 16, 32, 8, 48, 12, 24]
ONE_ADAPTER_RANK = 16  # engine_one: every request on the adapter of this rank
TARGET_RATIOS = {"engine_one": 0.7, "peft_sequential": 3.0, "peft_batched": 1.5}
SCALE_TARGET = 0.9
SCALE_ACTIVE = 8  # adapters active per batch in part (b)


# --- inputs --------------------------------------------------------------------------------------------------------


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def alpaca_prompts(tokenizer: Any, n: int, max_tokens: int) -> list[list[int]]:
    """Token ids of ``n`` Alpaca instructions (with their input) as one-turn chats, at most ``max_tokens`` each."""
    from studio.serving.generation import encode_prompt

    rows = common.alpaca_rows("train", n)
    prompts = []
    for row in rows:
        text = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        encoded = encode_prompt(tokenizer, [{"role": "user", "content": text}], max_tokens)
        prompts.append(encoded["input_ids"][0].tolist())
    return prompts


def load_base(model_dir: Path) -> Any:
    """The base model in fp32 with end-of-sequence off, so every request generates exactly its tokens."""
    model = load(model_dir)
    model.generation_config.eos_token_id = None
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = 0
    return model


def make_peft_adapters(model_dir: Path, root: Path, ranks: list[int]) -> tuple[Any, list[Path]]:
    """A PeftModel holding one random LoRA per rank (``a0``, ``a1``, ...), each also saved as a PEFT directory."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    peft: PeftModel | None = None
    paths = []
    for i, rank in enumerate(ranks):
        torch.manual_seed(1000 + i)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False)
        if peft is None:
            peft = get_peft_model(load_base(model_dir), config, adapter_name="a0")
        else:
            peft.add_adapter(f"a{i}", config)
        # PEFT writes an adapter not named "default" to a sub-folder of that name.
        peft.save_pretrained(root / "peft", selected_adapters=[f"a{i}"])
        paths.append((root / "peft" / f"a{i}").rename(root / f"adapter{i}_r{rank}"))
    assert peft is not None
    peft.eval()
    return peft, paths


def write_lora_set(model: Any, root: Path, count: int, rank: int) -> tuple[list[Path], float]:
    """``count`` random LoRA adapters of ``rank`` on every projection, written in PEFT's format; (dirs, seconds).

    Written straight to safetensors (no PeftModel per adapter) so 512 of them take seconds;
    the files are exactly what ``PeftModel.save_pretrained`` writes (the smoke test loads one with PEFT).
    """
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    start = time.perf_counter()
    shapes = {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS
    }
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS)
    generator = torch.Generator().manual_seed(7)
    paths = []
    for i in range(count):
        path = root / f"scale{i:04d}"
        path.mkdir(parents=True)
        config.save_pretrained(path)
        tensors = {}
        for name, (d_in, d_out) in shapes.items():
            prefix = f"base_model.model.{name}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, d_in, generator=generator) / d_in**0.5
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(d_out, rank, generator=generator) * 0.01
        save_file(tensors, str(path / "adapter_model.safetensors"))
        paths.append(path)
    return paths, time.perf_counter() - start


# --- (a) mixed adapters ---------------------------------------------------------------------------------------------


def _left_padded(prompts: list[list[int]], pad: int) -> tuple[Any, Any]:
    import torch

    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


def _agreement(tokens: list[list[int]], reference: list[list[int]]) -> dict[str, Any]:
    """Requests whose tokens equal the reference's, and where the others first differ."""
    first_diff = []
    for mine, ref in zip(tokens, reference, strict=True):
        diff = next((i for i, (a, b) in enumerate(zip(mine, ref, strict=False)) if a != b), None)
        if diff is None and len(mine) != len(ref):
            diff = min(len(mine), len(ref))
        first_diff.append(diff)
    return {
        "equal": sum(d is None for d in first_diff),
        "requests": len(first_diff),
        "first_differing_token": first_diff,
    }


def run_mixed(args: argparse.Namespace, model_dir: Path, prompts: list[list[int]], root: Path) -> dict[str, Any]:
    """Part (a): the five contenders on the same prompts, interleaved repeats, medians and ratios."""
    import torch

    from studio.serving.engine import EngineRequest, ServingEngine

    ranks = [RANKS[i % len(RANKS)] for i in range(len(prompts))]
    started = time.perf_counter()
    peft, adapters = make_peft_adapters(model_dir, root, ranks)
    setup_s = time.perf_counter() - started
    engine = ServingEngine(load_base(model_dir), slots=len(adapters), max_batch=len(prompts))
    one = ranks.index(ONE_ADAPTER_RANK) if ONE_ADAPTER_RANK in ranks else 0
    mixed = [
        EngineRequest(prompt_ids=p, adapter=str(a), temperature=0, max_new_tokens=args.new)
        for p, a in zip(prompts, adapters, strict=True)
    ]
    same = [r.model_copy(update={"adapter": str(adapters[one])}) for r in mixed]
    bare = [r.model_copy(update={"adapter": None}) for r in mixed]
    new = {"tokens": args.new}  # the warm-up runs with 2 tokens: it only has to page adapters in

    def engine_run(requests: list[Any], strategy: str = "auto") -> list[list[int]]:
        requests = [r.model_copy(update={"max_new_tokens": new["tokens"]}) for r in requests]
        return [r.token_ids for r in engine.generate(requests, strategy=strategy)]
    names = [f"a{i}" for i in range(len(prompts))]
    pad = peft.generation_config.pad_token_id or 0

    def peft_sequential() -> list[list[int]]:
        tokens = []
        for name, prompt in zip(names, prompts, strict=True):
            peft.set_adapter(name)
            ids = torch.tensor([prompt])
            out = peft.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new["tokens"]
            )
            tokens.append(out[0, len(prompt) :].tolist())
        return tokens

    def peft_batched() -> list[list[int]]:
        ids, mask = _left_padded(prompts, pad)
        out = peft.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new["tokens"], adapter_names=names
        )
        return out[:, ids.shape[1] :].tolist()

    contenders = {
        "engine_mixed": lambda: engine_run(mixed),
        # The same, but decode steps also take the segmented path (one matmul pair per adapter) instead of
        # gather-BMM: tells whether gathering zero-padded A/B per row is what the mixed batch pays for.
        "engine_mixed_segments": lambda: engine_run(mixed, "segments"),
        "engine_one": lambda: engine_run(same),
        "engine_base": lambda: engine_run(bare),
        "peft_sequential": peft_sequential,
        "peft_batched": peft_batched,
    }
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    outputs: dict[str, list[list[int]]] = {}
    profiles: dict[str, str] = {}
    with torch.inference_mode():
        new["tokens"] = 2
        for name, fn in contenders.items():  # warm-up: adapters read and paged in, first-call costs paid
            start = time.perf_counter()
            fn()
            print(f"  warm-up {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        new["tokens"] = args.new
        for _ in range(args.repeats):
            for name, fn in contenders.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                outputs[name] = fn()  # the tokens compared are those of the last repeat
                seconds[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
                print(f"  {name}: {seconds[name][-1]:.1f} s ({cpu[name][-1]:.1f} CPU s)", file=sys.stderr, flush=True)
        if args.profile:
            for name in ("engine_mixed", "engine_base", "peft_batched"):
                profiles[name] = profile(contenders[name])
    median = {name: statistics.median(values) for name, values in seconds.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    tokens = len(prompts) * args.new
    ratios = {name: median[name] / median["engine_mixed"] for name in TARGET_RATIOS}
    return {
        "requests": len(prompts),
        "new_tokens": args.new,
        "prompt_tokens": [len(p) for p in prompts],
        "ranks": ranks,
        "one_adapter_rank": ranks[one],
        "adapter_setup_seconds": setup_s,
        "median_seconds": median,
        "seconds": seconds,
        "tokens_per_s": {name: tokens / s for name, s in median.items()},
        # CPU seconds of this process: on a shared, busy machine they move less than wall time.
        "median_cpu_seconds": median_cpu,
        "cpu_seconds": cpu,
        "engine_mixed_speedup_vs": ratios,
        "engine_mixed_cpu_speedup_vs": {name: median_cpu[name] / median_cpu["engine_mixed"] for name in TARGET_RATIOS},
        "targets": TARGET_RATIOS,
        "targets_met": {name: ratios[name] >= target for name, target in TARGET_RATIOS.items()},
        "lora_cost_engine_mixed_vs_engine_base": median["engine_mixed"] / median["engine_base"],
        "profiles": profiles,
        "agreement_with_peft_sequential": {
            name: _agreement(outputs[name], outputs["peft_sequential"])
            for name in ("engine_mixed", "engine_mixed_segments", "peft_batched")
        },
    }


def profile(fn: Any, rows: int = 25) -> str:
    """The ops taking the most CPU time in one call of ``fn`` (torch.profiler), as a text table."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# --- (b) many registered adapters -------------------------------------------------------------------------------------


def scale_case(spec: dict[str, Any]) -> dict[str, Any]:
    """One adapter count of part (b) in this process: warm-up round, timed rounds, RSS and bank/host bytes.

    ``spec``: model_dir, adapters (paths, the registered set), prompts, new, rounds, slots,
    host_capacity (None: the engine's default).
    """
    import torch

    from studio.serving.engine import EngineRequest, ServingEngine

    case_start, load_before = time.perf_counter(), common.loadavg()
    engine = ServingEngine(
        load_base(Path(spec["model_dir"])), slots=spec["slots"], max_batch=SCALE_ACTIVE,
        host_capacity=spec.get("host_capacity"),
    )
    adapters, prompts = spec["adapters"], spec["prompts"]
    with torch.inference_mode():
        # The weights are memory-mapped until a forward touches them, and the first prefill allocates
        # its activations: one short round on the bare base first, so the baseline has both.
        base_round = [
            EngineRequest(prompt_ids=prompts[j % len(prompts)], temperature=0, max_new_tokens=2)
            for j in range(SCALE_ACTIVE)
        ]
        engine.generate(base_round)
    rss_loaded = rss_mb()

    def round_requests(k: int) -> list[Any]:
        return [
            EngineRequest(
                prompt_ids=prompts[j % len(prompts)],
                adapter=adapters[(k * SCALE_ACTIVE + j) % len(adapters)],
                temperature=0,
                max_new_tokens=spec["new"],
            )
            for j in range(SCALE_ACTIVE)
        ]

    setup_seconds = time.perf_counter() - case_start
    seconds, cpu, paged_in, rss_after = [], [], [], []
    with torch.inference_mode():
        engine.generate(round_requests(0))  # warm-up: first-call costs, the first adapters paged in
        for k in range(1, spec["rounds"] + 1):
            requests = round_requests(k)
            resident = engine.bank.resident()
            paged_in.append(len({str(Path(r.adapter).resolve()) for r in requests} - set(resident)))
            start, start_cpu = time.perf_counter(), time.process_time()
            engine.generate(requests)
            seconds.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            rss_after.append(rss_mb())
    # What paging costs on its own: reading the next round's adapters from disk into host RAM (a miss
    # whenever more are registered than the host cache holds) and writing them into the slots.
    page_start, page_cpu = time.perf_counter(), time.process_time()
    refs = {ref.key: ref.path for ref in (r.adapter_ref() for r in round_requests(spec["rounds"] + 1)) if ref}
    with torch.inference_mode():  # each distinct adapter once, no more than there are slots
        paged = engine.bank.acquire(list(refs.items())[: engine.bank.slots])
    engine.bank.release(paged)
    page_seconds, page_cpu_seconds = time.perf_counter() - page_start, time.process_time() - page_cpu
    bank_bytes = sum(b.A.nbytes + b.B.nbytes + b.scale.nbytes for b in engine.bank.layers.values())
    host = engine.bank._host  # noqa: SLF001 - the bench reports what the host cache holds
    total = sum(seconds)
    return {
        "registered": len(adapters),
        "rounds": spec["rounds"],
        "round_seconds": seconds,
        "tokens_per_s": spec["rounds"] * SCALE_ACTIVE * spec["new"] / total,
        "round_cpu_seconds": cpu,
        "tokens_per_cpu_s": spec["rounds"] * SCALE_ACTIVE * spec["new"] / sum(cpu),
        "adapters_paged_in_per_round": paged_in,
        "rss_loaded_mb": rss_loaded,
        "rss_after_rounds_mb": rss_after,
        "rss_growth_mb": max(rss_after) - rss_loaded if rss_after and rss_loaded else None,
        "bank_slot_mb": bank_bytes / 2**20,
        "host_cache_adapters": len(host),
        "host_cache_capacity": engine.bank.host_capacity,
        "host_cache_mb": sum(a.nbytes() for a in host.values()) / 2**20,
        "setup_seconds": setup_seconds,  # model load + the bare-base warm-up round
        "page_round_seconds": page_seconds,  # paging one round's adapters alone (after the timed rounds)
        "page_round_cpu_seconds": page_cpu_seconds,
        "case_seconds": time.perf_counter() - case_start,
        "loadavg_before": load_before,
        "loadavg_after": common.loadavg(),
    }


def run_scale(args: argparse.Namespace, model_dir: Path, prompts: list[list[int]], root: Path) -> dict[str, Any]:
    """Part (b): every count in its own process (or in this one with --quick), counts interleaved over repeats."""
    model = load_base(model_dir)
    paths, write_s = write_lora_set(model, root / "scale", max(args.counts), args.scale_rank)
    adapter_mb = sum(f.stat().st_size for f in paths[0].iterdir()) / 2**20
    del model
    runs: dict[int, list[dict[str, Any]]] = {count: [] for count in args.counts}
    for _ in range(args.scale_repeats):
        for count in args.counts:
            spec = {
                "model_dir": str(model_dir),
                "adapters": [str(p) for p in paths[:count]],
                "prompts": prompts[:SCALE_ACTIVE],
                "new": args.scale_new,
                "rounds": args.scale_rounds,
                "slots": args.slots,
                "host_capacity": args.host_capacity,
            }
            if args.in_process:
                runs[count].append(scale_case(spec))
                continue
            spec_file = root / f"spec{count}.json"
            spec_file.write_text(json.dumps(spec))
            child_start = time.perf_counter()
            result = run_child([str(Path(__file__).resolve()), "--scale-child", str(spec_file)], timeout=1800)
            if "error" in result:
                raise SystemExit(f"scale case {count} failed: {result}")
            result["process_seconds"] = time.perf_counter() - child_start  # imports + load + rounds
            print(f"count {count}: {result['process_seconds']:.0f} s in its process, "
                  f"{result['tokens_per_cpu_s']:.1f} tokens/CPU-s, load {result['loadavg_after']}", flush=True)
            runs[count].append(result)
    summary = {}
    for count, results in runs.items():
        summary[count] = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in results),
            "tokens_per_cpu_s": statistics.median(r["tokens_per_cpu_s"] for r in results),
            "rss_growth_mb": statistics.median(r["rss_growth_mb"] for r in results if r["rss_growth_mb"] is not None)
            if any(r["rss_growth_mb"] is not None for r in results)
            else None,
            "bank_slot_mb": results[-1]["bank_slot_mb"],
            "host_cache_adapters": results[-1]["host_cache_adapters"],
            "host_cache_mb": results[-1]["host_cache_mb"],
            "paged_in_per_round": statistics.mean(x for r in results for x in r["adapters_paged_in_per_round"]),
        }
    first = summary[args.counts[0]]
    for count in summary:
        summary[count]["vs_first"] = summary[count]["tokens_per_s"] / first["tokens_per_s"]
        summary[count]["cpu_vs_first"] = summary[count]["tokens_per_cpu_s"] / first["tokens_per_cpu_s"]
    return {
        "counts": args.counts,
        "rank": args.scale_rank,
        "active_per_batch": SCALE_ACTIVE,
        "slots": args.slots,
        "new_tokens": args.scale_new,
        "adapter_file_mb": adapter_mb,
        "write_seconds": write_s,
        "disk_mb": adapter_mb * max(args.counts),
        "isolated_processes": not args.in_process,
        "summary": summary,
        "runs": runs,
        "target": SCALE_TARGET,
        "target_met": all(s["vs_first"] >= SCALE_TARGET for s in summary.values()),
    }


# --- driver -------------------------------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_BASE, help="bundled model name, local model directory or hub id")
    add_data_argument(parser)
    add_threads_argument(parser)
    parser.add_argument("--quick", action="store_true", help="smoke run: few requests and tokens, one repeat")
    parser.add_argument("--requests", type=int, default=8, help="(a) concurrent requests, one adapter each")
    parser.add_argument("--new", type=int, default=64, help="(a) new tokens per request")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="longest prompt, tokens (longer ones keep the end)")
    parser.add_argument("--repeats", type=int, default=3, help="(a) interleaved timed repeats")
    parser.add_argument("--counts", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 64, 512])
    parser.add_argument("--scale-rank", type=int, default=2, help="(b) rank of every registered adapter")
    parser.add_argument("--scale-new", type=int, default=32, help="(b) new tokens per request")
    parser.add_argument("--scale-rounds", type=int, default=4, help="(b) timed rounds of 8 requests per count")
    parser.add_argument("--scale-repeats", type=int, default=1, help="(b) processes per count, interleaved")
    parser.add_argument("--slots", type=int, default=None, help="(b) adapter slots (default: settings.serving_slots)")
    parser.add_argument("--host-capacity", type=int, default=None, help="(b) adapters kept in host RAM (default 4x slots)")
    parser.add_argument("--in-process", action="store_true", help="(b) run every count in this process (RSS shared)")
    parser.add_argument("--profile", action="store_true", help="(a) profile one run of three contenders (op table)")
    parser.add_argument("--skip-mixed", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "serving.json")
    parser.add_argument("--scale-child", type=Path, help=argparse.SUPPRESS)
    if parser.parse_args(argv).quick:  # smaller defaults; options given on the command line still win
        parser.set_defaults(
            requests=4, new=8, repeats=1, prompt_tokens=48,
            counts=[1, 8, 24], scale_new=4, scale_rounds=3, scale_repeats=1, in_process=True,
        )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    prepare_env(threads=args.threads)
    if args.scale_child is not None:  # one count of part (b), started by run_scale
        print(json.dumps(scale_case(json.loads(args.scale_child.read_text()))))
        return {}
    use_data(args.data)
    if args.slots is None:
        from studio.settings import load_settings

        args.slots = load_settings().serving_slots
    model_dir = common.resolve_base(args.model)
    tokenizer = load_tokenizer(model_dir)
    prompts = alpaca_prompts(tokenizer, max(args.requests, SCALE_ACTIVE), args.prompt_tokens)
    result: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    result["machine"] = machine_info()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        if not args.skip_mixed:
            result["mixed"] = run_mixed(args, model_dir, prompts[: args.requests], Path(tmp))
            print_mixed(result["mixed"])
        if not args.skip_scale:
            result["scale"] = run_scale(args, model_dir, prompts, Path(tmp))
            print_scale(result["scale"])
    result["total_seconds"] = time.perf_counter() - started
    result["loadavg_after"] = common.loadavg()
    write_json(args.out, result)
    print(f"-> {args.out} ({result['total_seconds']:.0f} s, load before {result['machine']['loadavg_1_5_15']})")
    return result


def print_mixed(mixed: dict[str, Any]) -> None:
    rows = [
        [name, f"{mixed['median_seconds'][name]:.2f}", f"{mixed['tokens_per_s'][name]:.1f}",
         f"{mixed['engine_mixed_speedup_vs'][name]:.2f}x (target {TARGET_RATIOS[name]}x)"
         if name in TARGET_RATIOS else ""]
        for name in mixed["median_seconds"]
    ]
    print(text_table(["contender", "median s", "new tokens/s", "engine_mixed vs this"], rows))
    cpu_ratios = mixed["engine_mixed_cpu_speedup_vs"]
    print("per CPU-second: " + ", ".join(f"engine_mixed vs {n} {r:.2f}x" for n, r in cpu_ratios.items()))
    for name, table in mixed["profiles"].items():
        print(f"profile of {name}:\n{table}")
    agree = mixed["agreement_with_peft_sequential"]
    print(
        "tokens equal to peft_sequential: "
        + ", ".join(f"{name} {a['equal']}/{a['requests']}" for name, a in agree.items())
    )


def print_scale(scale: dict[str, Any]) -> None:
    rows = [
        [count, f"{s['tokens_per_s']:.1f}", f"{s['vs_first']:.2f}x", f"{s['cpu_vs_first']:.2f}x",
         f"{s['paged_in_per_round']:.1f}",
         f"{s['rss_growth_mb']:.0f}" if s["rss_growth_mb"] is not None else "-", f"{s['bank_slot_mb']:.1f}",
         f"{s['host_cache_adapters']} ({s['host_cache_mb']:.0f} MiB)"]
        for count, s in scale["summary"].items()
    ]
    headers = ["adapters", "tokens/s", "vs 1st", "per CPU-s vs 1st", "paged in/round", "RSS growth MiB", "bank MiB", "host cache"]
    print(text_table(headers, rows))


if __name__ == "__main__":
    main()
