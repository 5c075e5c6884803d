"""ICM-LoRA on real data: adapters generated for a left-out task, against the bare base and a trained adapter.

Issue #15 item 6, generation half. Seven tasks on the bundled ``smollm2-135m-instruct``, all as
prompt → completion rows: GSM8K (question → worked answer), E2E NLG (restaurant attributes → one
sentence), SST-2 (review → "positive"/"negative") and Alpaca split by kind of instruction
(:func:`bench.common.instruction_category`: write, explain, classify, rewrite; "other" is left out,
it is not one task). Rows longer than ``MAX_CHARS`` (prompt + completion) are skipped so that most
fit ``--max-length`` untruncated.

1. Each task gets a LoRA of one shape (``--rank``, ``--targets``: the generator learns adapters of
   one shape) trained with ``hyper.keep_checkpoints`` (``--keep`` adapters along the last half of
   training: what ICM-LoRA learns from). These are cached in ``--work`` (``task_adapters.json``,
   keyed by task and training set-up), so a resumed or repeated run reuses them.
2. For each held-out task t (``--held-out``, default all: leave one out), a ``generator`` job trains
   the CVAE (``--preset``, ``--epochs``) on the other tasks' kept checkpoints, and a ``generate`` job
   makes t's adapter from the first ``--examples`` (~30) of t's training rows.
3. The ``eval`` job scores, on t's held-out rows (response-token loss): the bare base, the generated
   adapter and t's trained adapter. Held-out rows: the test/dev split of each data set (for an
   Alpaca kind, its rows of ``alpaca/test.jsonl``, topped up with training rows after the ones
   trained on when the test split has too few).

The generator's size is reported against the adapters it stands for: its parameters against one
adapter's and against all the checkpoints it learnt (the paper: about 1 %), and the job's bytes ratio.

Every step goes through the studio: datasets by ``DatasetService``, jobs by ``JobService.submit`` run
here by the studio's job runner (``run_job_inline``). Each result is written to the JSON as it
finishes (``--resume`` skips what is there) and the page is rewritten after each.

    python scripts/generate_real.py --quick --out /tmp/g.json --doc /tmp/g.md       # tiny, minutes
    python scripts/generate_real.py --data /work/shared/data                       # the documented run
    python scripts/generate_real.py --data /work/shared/data --resume              # go on after a stop
    python scripts/generate_real.py --render-only                                  # rewrite the page
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    DEFAULT_BASE,
    RESULTS_DIR,
    add_run_arguments,
    data_file,
    instruction_category,
    markdown_table,
    open_record,
    read_jsonl,
    record_saver,
    start_run,
    write_json,
    write_jsonl,
)

ALPACA_KINDS = ("write", "explain", "classify", "rewrite")
TASKS = ("gsm8k", "e2e_nlg", "sst2", *(f"alpaca-{kind}" for kind in ALPACA_KINDS))
MAX_CHARS = 500  # prompt + completion; most such rows fit max_length 128 tokens untruncated
E2E_PROMPT = "Write one sentence describing this restaurant: {mr}"
SST2_PROMPT = "Is the sentiment of this movie review positive or negative? Answer with one word.\n\n{sentence}"
SST2_WORDS = {0: "negative", 1: "positive"}
HELD_OUT_SPLIT = {"gsm8k": "test", "e2e_nlg": "dev", "sst2": "dev", "alpaca": "test"}
DEFAULT_WORK = Path("/tmp/generate-real-work")
CACHE_FILE = "task_adapters.json"
# "nearest": the trained adapter of the task the generator found nearest (its *reference*), scored on the left-out
# task: what reusing an existing adapter gives without any generator, the baseline a generated adapter must beat.
ARMS = ("bare", "generated", "nearest", "trained")
ARM_TITLES = {
    "bare": "bare base",
    "generated": "generated (left out)",
    "nearest": "nearest task's adapter",
    "trained": "trained on the task",
}


# --- rows ---------------------------------------------------------------------------------------------------------


def source_rows(task: str, split: str) -> list[dict[str, str]]:
    """All rows of ``task`` in ``split`` (``train`` or ``held-out``) as prompt/completion, in file order, short ones only."""
    if task not in TASKS:
        raise SystemExit(f"error: unknown task {task!r}; choose from {', '.join(TASKS)}")
    dataset = "alpaca" if task.startswith("alpaca-") else task
    name = "train" if split == "train" else HELD_OUT_SPLIT[dataset]
    raw = read_jsonl(data_file(dataset, f"{name}.jsonl"))
    if dataset == "gsm8k":
        rows = [{"prompt": r["question"], "completion": r["answer"]} for r in raw]
    elif dataset == "e2e_nlg":
        rows = [{"prompt": E2E_PROMPT.format(mr=r["mr"]), "completion": r["ref"]} for r in raw]
    elif dataset == "sst2":
        rows = [
            {"prompt": SST2_PROMPT.format(sentence=r["sentence"].strip()), "completion": SST2_WORDS[int(r["label"])]}
            for r in raw
        ]
    else:  # an Alpaca kind
        kind = task.removeprefix("alpaca-")
        rows = [
            {"prompt": _alpaca_prompt(r), "completion": r["output"]}
            for r in raw
            if instruction_category(r["instruction"]) == kind
        ]
    return [r for r in rows if len(r["prompt"]) + len(r["completion"]) <= MAX_CHARS]


def _alpaca_prompt(row: dict[str, Any]) -> str:
    """Instruction, then the input (when there is one) after a blank line."""
    extra = (row.get("input") or "").strip()
    return f"{row['instruction'].strip()}\n\n{extra}" if extra else row["instruction"].strip()


def build_task(task: str, train_n: int, eval_n: int) -> dict[str, list[dict[str, str]]]:
    """``train`` (the first ``train_n`` short training rows) and ``eval`` (``eval_n`` held-out rows, disjoint).

    Held-out rows come from the data set's test/dev split; when it has fewer than ``eval_n`` short rows
    of the task (an Alpaca kind), training rows after the first ``train_n`` top it up.
    """
    train_all = source_rows(task, "train")
    train = train_all[:train_n]
    held = source_rows(task, "held-out")[:eval_n]
    if len(held) < eval_n:
        held += train_all[train_n : train_n + eval_n - len(held)]
    return {"train": train, "eval": held}


# --- the run ------------------------------------------------------------------------------------------------------


def lora_params(args: argparse.Namespace) -> dict[str, Any]:
    """One LoRA shape for every task (a generator learns adapters of one shape)."""
    return {"r": args.rank, "lora_alpha": 2 * args.rank, "target_modules": args.targets.split(",")}


def hyper(args: argparse.Namespace) -> dict[str, Any]:
    """One training set-up for every task's adapter; ``keep_checkpoints`` keeps what the generator learns."""
    return {
        "max_steps": args.steps,
        "batch_size": 4,
        "max_length": args.max_length,
        "learning_rate": args.lr,
        "validation_fraction": 0.0,
        "keep_checkpoints": args.keep,
        "save_every": 100_000,
        "eval_every": 100_000,
        "log_every": 4,
    }


def config_of(args: argparse.Namespace) -> dict[str, Any]:
    """What decides the numbers: a JSON made with another config is not resumed."""
    keys = (
        "base", "tasks", "train_rows", "eval_rows", "examples", "steps", "lr", "max_length", "rank", "targets",
        "keep", "preset", "epochs", "gen_lr", "seed", "data",
    )  # fmt: skip
    return {k: str(getattr(args, k)) for k in keys}


def training_key(task: str, args: argparse.Namespace) -> str:
    """The cache key of a task's adapter: the task and everything its training depends on."""
    keys = ("base", "train_rows", "steps", "lr", "max_length", "rank", "targets", "keep", "data")
    blob = json.dumps({"task": task, **{k: str(getattr(args, k)) for k in keys}}, sort_keys=True)
    return f"{task}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def task_adapter(studio: Any, work: Path, task: str, dataset_id: int, args: argparse.Namespace) -> dict[str, Any]:
    """The task's LoRA from the ``--work`` cache when it is still registered; else trained (and cached)."""
    from studio.errors import NotFoundError
    from studio.training.kept_adapters import kept_adapter_dirs

    cache_path = work / CACHE_FILE
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    key = training_key(task, args)
    if key in cache:
        try:
            row = studio.svc.registry.get_adapter(cache[key]["adapter_id"])
            if Path(row.path).is_dir():
                print(f"{task}: reusing adapter #{row.id} from {cache_path}", flush=True)
                return {**cache[key], "cached": True}
        except NotFoundError:
            pass
    result = studio.run(
        {
            "kind": "train", "name": f"{task} lora (kept checkpoints)", "dataset_id": dataset_id,
            "base_model": args.base, "variant": "lora", "variant_params": lora_params(args), "hyper": hyper(args),
            "seed": args.seed, "transfer_kit": False,
        }
    )  # fmt: skip
    row = studio.svc.registry.get_adapter(result["adapter_id"])
    made = {
        "adapter_id": row.id,
        "final_loss": result.get("final_loss"),
        "seconds": result["seconds"],
        "params": row.trainable_params,
        "checkpoints": len(kept_adapter_dirs(row.path)),
        "job_id": result["job_id"],
    }
    cache[key] = made
    write_json(cache_path, cache)
    return {**made, "cached": False}


def score(studio: Any, dataset_id: int, args: argparse.Namespace, target: dict[str, Any]) -> dict[str, Any]:
    """Held-out response-token loss of ``target`` (an adapter or the bare base) by the eval job."""
    result = studio.run(
        {"kind": "eval", "dataset_id": dataset_id, "metrics": ["loss"], "max_examples": args.eval_rows, **target}
    )
    return {
        "loss": result["metrics"]["eval_loss"],
        "examples": result.get("examples"),
        "eval_seconds": result["seconds"],
        "eval_job_id": result["job_id"],
    }


def generated_arm(studio: Any, task: str, setup: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Train a generator on the other tasks' adapters, generate ``task``'s adapter from its examples, score it."""
    adapters = setup["adapters"]
    others = [t for t in setup["tasks"] if t != task]
    trained = studio.run(
        {
            "kind": "generator", "name": f"ICM-LoRA generator without {task}",
            "adapter_ids": [adapters[t]["adapter_id"] for t in others], "preset": args.preset, "epochs": args.epochs,
            "learning_rate": args.gen_lr, "examples": args.examples, "seed": args.seed,
        }
    )  # fmt: skip
    made = studio.run(
        {
            "kind": "generate", "name": f"generated for {task}", "generator_id": trained["generator_id"],
            "dataset_id": setup["datasets"][task]["examples"], "examples": args.examples, "seed": args.seed,
        }
    )  # fmt: skip
    by_key = {f"adapter-{adapters[t]['adapter_id']}": t for t in others}
    adapter_params = adapters[task]["params"]
    stands_for = adapter_params * int(trained["checkpoints"])
    return {
        "adapter_id": made["adapter_id"],
        "reference_task": by_key.get(made["reference_task"], made["reference_task"]),
        "generate_seconds": made["seconds"],
        "generator": {
            "id": trained["generator_id"],
            "tasks": others,
            "parameters": trained["parameters"],
            "checkpoints": int(trained["checkpoints"]),
            "vs_one_adapter": trained["parameters"] / adapter_params if adapter_params else None,
            "vs_checkpoints": trained["parameters"] / stands_for if stands_for else None,
            "bytes_vs_checkpoints": trained.get("size_vs_checkpoints"),
            "final_loss": trained.get("final_loss"),
            "final_mse": trained.get("final_mse"),
            "seconds": trained["seconds"],
        },
        **score(studio, setup["datasets"][task]["eval"], args, {"adapter_id": made["adapter_id"]}),
    }


def network_sizes(adapter_dir: Path, cond_dim: int) -> dict[str, Any]:
    """D of this LoRA shape and each preset's parameter count for it (how the CVAE was scaled down)."""
    from safetensors import safe_open

    from studio.adapter_generation.cvae import PRESETS, parameter_count

    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as handle:
        size = 0
        for key in handle.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
            shape = handle.get_slice(key).get_shape()
            size += int(shape[0]) * int(shape[1]) if len(shape) == 2 else int(shape[0])
    return {
        "D": size,
        "cond_dim": cond_dim,
        "presets": {name: parameter_count(config, size, cond_dim) for name, config in PRESETS.items()},
    }


def update_norm(adapter_dir: Path) -> float:
    """‖ΔW‖ of a LoRA directory: the Frobenius norm of every module's B·A together (scaling left out: one shape)."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    total = 0.0
    for key, a in tensors.items():
        if "lora_A" in key:
            b = tensors[key.replace("lora_A", "lora_B")]
            total += float(torch.linalg.matrix_norm(b.float() @ a.float()) ** 2)
    return total**0.5


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything not yet in ``args.out`` (with ``--resume``), writing the JSON and the page after each result."""
    record = open_record(args, config_of(args), {"setup": {}, "results": {}})
    record["held_out"] = held_out_tasks(args)
    save = record_saver(record, args.out, args.doc, render)

    from bench.inline_studio import Studio

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    studio = Studio(work)
    setup = record["setup"]
    setup["tasks"] = args.tasks.split(",")

    if "datasets" not in setup:
        setup["rows"], setup["datasets"] = {}, {}
        for task in setup["tasks"]:
            built = build_task(task, args.train_rows, args.eval_rows)
            built["examples"] = built["train"][: args.examples]
            setup["rows"][task] = {part: len(rows) for part, rows in built.items()}
            setup["datasets"][task] = {
                part: studio.dataset(write_jsonl(work / "data" / f"{task}-{part}.jsonl", rows))
                for part, rows in built.items()
            }
        save()
    adapters = setup.setdefault("adapters", {})
    for task in setup["tasks"]:
        if task not in adapters:
            print(f"== training {task}", flush=True)
            adapters[task] = task_adapter(studio, work, task, setup["datasets"][task]["train"], args)
            save()
    if "network" not in setup:
        first = studio.svc.registry.get_adapter(adapters[setup["tasks"][0]]["adapter_id"])
        from transformers import AutoConfig

        hidden = int(AutoConfig.from_pretrained(studio.base_path(args.base)).hidden_size)
        setup["network"] = network_sizes(Path(first.path), hidden)
        save()

    results = record["results"]
    for task in record["held_out"]:
        done = results.setdefault(task, {})
        for arm in ARMS:
            if arm in done:
                continue
            print(f"== {task}: {arm}", flush=True)
            eval_id = setup["datasets"][task]["eval"]
            if arm == "bare":
                done[arm] = score(studio, eval_id, args, {"base_model": args.base})
            elif arm == "trained":
                done[arm] = score(studio, eval_id, args, {"adapter_id": adapters[task]["adapter_id"]})
            elif arm == "nearest":
                nearest = done["generated"]["reference_task"]
                done[arm] = {
                    "task": nearest,
                    **score(studio, eval_id, args, {"adapter_id": adapters[nearest]["adapter_id"]}),
                }
            else:
                done[arm] = generated_arm(studio, task, setup, args)
            save()
    # How far each adapter moves the base: a generator that regressed to the mean writes a small update.
    registry = studio.svc.registry
    for entry in adapters.values():
        entry.setdefault("update_norm", update_norm(Path(registry.get_adapter(entry["adapter_id"]).path)))
    for task in record["held_out"]:
        generated = results.get(task, {}).get("generated")
        if generated is not None and "update_norm" not in generated:
            generated["update_norm"] = update_norm(Path(registry.get_adapter(generated["adapter_id"]).path))
    record["extra"] = list(args.extra)
    record["finished"] = True
    save()
    return record


def held_out_tasks(args: argparse.Namespace) -> list[str]:
    """The tasks left out in turn (``--held-out``, default every task), refused when not among ``--tasks``."""
    tasks = args.tasks.split(",")
    chosen = args.held_out.split(",") if args.held_out else tasks
    unknown = [t for t in chosen if t not in tasks]
    if unknown:
        raise SystemExit(f"error: --held-out {', '.join(unknown)} not among --tasks ({', '.join(tasks)})")
    return chosen


# --- the page -----------------------------------------------------------------------------------------------------


def gap_closed(result: dict[str, Any], arm: str = "generated") -> float | None:
    """Share of the bare → trained loss gap ``arm`` closes (1 = as good as training; None if unknown)."""
    try:
        bare, trained, scored = (result[a]["loss"] for a in ("bare", "trained", arm))
    except KeyError:
        return None
    return None if bare == trained else (bare - scored) / (bare - trained)


def verdict(results: dict[str, dict[str, Any]], adapters: dict[str, Any] | None = None) -> list[str]:
    """Plain sentences: does the generated adapter beat the bare base, and how much of training's gain does it get."""
    complete = {t: r for t, r in results.items() if all(a in r for a in ARMS)}
    if not complete:
        return []
    better = [t for t, r in complete.items() if r["generated"]["loss"] < r["bare"]["loss"]]
    beats_nearest = [t for t, r in complete.items() if r["generated"]["loss"] < r["nearest"]["loss"]]
    nearest_shares = [s for s in (gap_closed(r, "nearest") for r in complete.values()) if s is not None]
    nearest_mean = sum(nearest_shares) / len(nearest_shares) if nearest_shares else None
    shares = [s for s in (gap_closed(r) for r in complete.values()) if s is not None]
    mean = sum(shares) / len(shares) if shares else None
    lines = [
        f"**Generated adapter better than the bare base (lower held-out loss): {len(better)} of {len(complete)}"
        f" left-out tasks** ({', '.join(better) or 'none'}).",
        "**Share of the bare → trained gap the generated adapter closes, mean over the left-out tasks: "
        + (_share(mean) if mean is not None else "n/a")
        + ".** Negative: worse than the bare base; 100 %: as good as training on the task.",
        f"**Generated adapter better than reusing the nearest task's trained adapter: {len(beats_nearest)} of"
        f" {len(complete)}** ({', '.join(beats_nearest) or 'none'}); the nearest task's adapter closes "
        + (_share(nearest_mean) if nearest_mean is not None else "n/a")
        + " of the gap on average.",
        "One seed, a few dozen held-out rows per task and short training runs: differences of a few hundredths"
        " of loss are within noise; read the pattern over tasks, not one task's number.",
    ]
    ratios = [
        float(_norm_ratio(r["generated"], (adapters or {}).get(t, {})))
        for t, r in complete.items()
        if _norm_ratio(r["generated"], (adapters or {}).get(t, {}))
    ]
    if ratios:
        lines.insert(
            2,
            f"**The generated adapters move the base far less than trained ones: ‖ΔW‖ {min(ratios):.2f}–"
            f"{max(ratios):.2f} of the left-out task's trained adapter's** (‖ΔW‖: the norm of every module's B·A).",
        )
    return lines


def render(record: dict[str, Any]) -> str:
    """The page (docs/results/generation.md) from the run's JSON; says so when it is partial or not yet run."""
    config, setup, results = record["config"], record.get("setup", {}), record.get("results", {})
    machine, network = record.get("machine", {}), setup.get("network", {})
    tasks = setup.get("tasks") or config["tasks"].split(",")
    held_out = record.get("held_out") or tasks
    missing = [t for t in held_out if not all(a in results.get(t, {}) for a in ARMS)]
    status: list[str] = []
    if not results:
        status = [
            f"**Not yet run.** The documented run is `{record.get('command', '')}`: seven task LoRAs, then one"
            " generator per left-out task, an estimated 2–3 h on the project's 2-core CPU at one thread (one"
            " `small` generator epoch over 48 checkpoints of this shape took 8.5 s there, so 100 epochs are ~15 min"
            " per left-out task). `--quick` checks the whole path in ~5 min.",
            "",
        ]
    elif missing:
        status = [f"**Partial run**: not yet scored for the left-out task(s) {', '.join(missing)}.", ""]
    table = []
    for task in held_out:
        r = results.get(task, {})
        gen = r.get("generated", {})
        share = gap_closed(r)
        table.append(
            [
                task,
                *(f"{r[a]['loss']:.3f}" if a in r else "not run" for a in ("bare", "generated", "trained")),
                _share(share),
                f"{r['nearest']['loss']:.3f} ({_share(gap_closed(r, 'nearest'))})" if "nearest" in r else "not run",
                _norm_ratio(gen, setup.get("adapters", {}).get(task, {})),
                gen.get("reference_task", ""),
                f"{gen['generator']['seconds'] / 60:.1f}" if gen else "",
            ]
        )
    sizes = []
    for task in held_out:
        gen = results.get(task, {}).get("generated", {}).get("generator")
        if gen:
            sizes.append(
                [
                    task, f"{gen['parameters']:,}", str(int(gen["checkpoints"])), _pct(gen["vs_one_adapter"]),
                    _pct(gen["vs_checkpoints"]), _pct(gen["bytes_vs_checkpoints"]), _num(gen.get("final_mse")),
                ]
            )  # fmt: skip
    adapters = setup.get("adapters", {})
    adapter_rows = [
        [
            t, str(setup.get("rows", {}).get(t, {}).get("train", "?")), str(setup.get("rows", {}).get(t, {}).get("eval", "?")),
            _num(a.get("final_loss")), str(a.get("checkpoints", "?")), f"{a.get('seconds', 0) / 60:.1f}",
        ]
        for t, a in adapters.items()
    ]  # fmt: skip
    presets = network.get("presets", {})
    load = f"load average {_load(record.get('load_start'))} at the start, {_load(record.get('load_end'))} at the end"
    lines = [
        "# ICM-LoRA on real data: an adapter generated for a left-out task",
        "",
        *status,
        "Generated by `scripts/generate_real.py`; raw numbers in `bench/results/generate_real.json`"
        " (rebuild this page with `python scripts/generate_real.py --render-only`).",
        "",
        "## Set-up",
        "",
        f"- Tasks ({len(tasks)}), each as prompt → completion rows of at most {MAX_CHARS} characters: "
        + ", ".join(f"`{t}`" for t in tasks)
        + ". GSM8K: question → worked answer; E2E NLG: restaurant attributes → one sentence; SST-2: review →"
        ' "positive"/"negative"; Alpaca split by kind of instruction (the leading verb, `instruction_category` in'
        ' `bench/common.py`, the split the federated page uses; the kind "other" is left out).',
        f"- One LoRA per task on `{config['base']}`, all of one shape (a generator learns one shape): r"
        f" {config['rank']}, alpha {2 * int(config['rank'])}, on {config['targets']} of every block; the first"
        f" {config['train_rows']} rows, {config['steps']} steps × batch 4, lr {float(config['lr']):g}, max_length"
        f" {config['max_length']}, seed {config['seed']}, keeping {config['keep']} adapters along the last half of"
        " training (`hyper.keep_checkpoints`): the generator's training items.",
        f"- Leave one out: for each left-out task a `generator` job trains the CVAE (preset `{config['preset']}`,"
        f" {config['epochs']} epochs, lr {float(config['gen_lr']):g}) on the other tasks' kept checkpoints,"
        f" conditioned on task vectors from the base's hidden states over the first {config['examples']} rows of"
        f" each task; a `generate` job makes the left-out task's adapter from its first {config['examples']}"
        " training rows (per-tensor scales from the nearest training task: *reference* below). *Nearest task's"
        " adapter*: that reference task's own trained adapter scored on the left-out task — reusing the closest"
        " adapter there is, with no generator: the baseline a generated adapter has to beat.",
        f"- Scores by the `eval` job: response-token loss on up to {config['eval_rows']} held-out rows of the"
        " left-out task (its test/dev split; an Alpaca kind is topped up with training rows after those trained on"
        " when the test split has too few). *Gap closed*: share of the bare → trained loss gap the generated"
        " adapter closes (100 % = as good as training on the task; negative = worse than the bare base).",
        "- Every step ran through `JobService.submit` and the studio's job runner in this process"
        " (`run_job_inline`), on an embedded registry.",
        *(
            []
            if not machine
            else [
                f"- Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores,"
                f" {machine.get('torch_threads', '?')} torch thread(s), torch"
                f" {machine.get('versions', {}).get('torch', '?')}; wall time {record.get('elapsed_s', 0) / 60:.1f} min;"
                f" {load}. Command: `{record.get('command', '')}`."
            ]
        ),
        "",
        "## How the CVAE was scaled down",
        "",
        "The paper's network (`paper` preset in `studio/adapter_generation/cvae.py`: 12 Conv1d blocks of widths"
        " 8…256…8, hidden and latent 256, θ padded to a multiple of 4096) has 7.8 M parameters for the studio's"
        " default LoRA on SmolLM2-135M (r 8 on all seven linears, D = 2,442,240): 3.2× one adapter, ~57 GMAC per"
        " sample, too slow for a CPU. The `small` preset keeps the 12 blocks (the same 4096× length reduction,"
        " which keeps the Linear layers small) with widths capped at 32, hidden 128, latent 64 (2.0 M parameters"
        " at that D, 1/14 of the compute). This run also learns a smaller LoRA shape (r and target modules above),"
        " so the generator trains in minutes per left-out task on a CPU. The paper reports a generator of about"
        " 1 % of the adapters it stands for. Known before any run (`parameter_count`): for this script's default"
        " shape (r 2 on q_proj,v_proj, D = 115,200) `small` has 271,725 parameters, 2.4× one adapter and ~4.9 % of"
        " 48 checkpoints (6 tasks × 8 kept), so ~1 % is out of reach at this scale: most of a small generator is"
        " fixed cost (the layers that take the 576-value task vector), which does not shrink with the adapter. At"
        " the default r 8 on all linears `small` would be 1.7 % of 48 checkpoints, `paper` 6.6 %.",
        "",
        *(
            [
                f"For this run's shape, D = {network['D']:,} LoRA values, task vectors of {network['cond_dim']}:"
                + ", ".join(f" `{name}` {count:,} parameters" for name, count in presets.items())
                + ".",
                "",
            ]
            if network
            else []
        ),
        "## Results",
        "",
        markdown_table(
            [
                "left-out task",
                "bare base",
                "generated",
                "trained",
                "gap closed",
                "nearest task's adapter (gap closed)",
                "‖ΔW‖ generated / trained",
                "reference (nearest task)",
                "generator min",
            ],
            table,
        ),
        "",
        *[line + "\n" for line in verdict(results, setup.get("adapters", {}))],
        *extra_section(record.get("extra", [])),
        "## The generator's size against the adapters it stands for",
        "",
        (
            markdown_table(
                [
                    "left-out task",
                    "generator parameters",
                    "checkpoints learnt",
                    "vs one adapter",
                    "vs the checkpoints",
                    "bytes vs checkpoints",
                    "final reconstruction MSE",
                ],
                sizes,
            )  # fmt: skip
            if sizes
            else "Not yet measured."
        ),
        "",
        "*vs the checkpoints*: the generator's parameters over those of all the checkpoints it learnt (the paper's"
        " ~1 % compares with this); *bytes*: its saved directory against the checkpoints' weight files, as the"
        " generator job reports it.",
        "",
        "## Task adapters",
        "",
        (
            markdown_table(
                ["task", "training rows", "held-out rows", "final train loss", "kept checkpoints", "train min"],
                adapter_rows,
            )
            if adapter_rows
            else "Not yet trained."
        ),
        "",
    ]
    return "\n".join(lines).rstrip() + "\n"


def _norm_ratio(generated: dict[str, Any], trained: dict[str, Any]) -> str:
    """'0.12' (the generated adapter's update norm over the task's trained adapter's); '' when unknown."""
    if "update_norm" not in generated or not trained.get("update_norm"):
        return ""
    return f"{generated['update_norm'] / trained['update_norm']:.2f}"


def extra_section(paths: list[str]) -> list[str]:
    """Runs with other generator settings (``--extra``): one row per left-out task they scored."""
    rows = []
    for path in paths:
        file = Path(path) if Path(path).is_file() else RESULTS_DIR / Path(path).name  # a name in bench/results
        if not file.is_file():
            continue
        extra = json.loads(file.read_text())
        config, adapters = extra["config"], extra.get("setup", {}).get("adapters", {})
        for task, r in extra.get("results", {}).items():
            if not all(a in r for a in ARMS):
                continue
            gen = r["generated"]
            rows.append(
                [
                    task, f"{config['preset']}, {config['epochs']} epochs, lr {float(config['gen_lr']):g}",
                    _num(gen["generator"].get("final_mse")), f"{gen['generator']['seconds'] / 60:.1f}",
                    *(f"{r[a]['loss']:.3f}" for a in ("bare", "generated", "nearest", "trained")),
                    _share(gap_closed(r)), _norm_ratio(gen, adapters.get(task, {})), f"`{file.name}`",
                ]
            )  # fmt: skip
    if not rows:
        return []
    header = [
        "left-out task", "generator", "final reconstruction MSE", "generator min", "bare base", "generated",
        "nearest task's adapter", "trained", "gap closed", "‖ΔW‖ generated / trained", "run",
    ]  # fmt: skip
    return [
        "## Other generator settings",
        "",
        "The same left-out task with a generator trained longer and at a larger rate, everything else as above"
        " (made with `--held-out TASK --epochs N --gen-lr LR --out bench/results/NAME.json`, the task adapters"
        " reused from `--work`; shown here with `--extra NAME.json`; raw numbers in the JSON of the last column).",
        "",
        markdown_table(header, rows),
        "",
    ]


def _share(value: float | None) -> str:
    """'35%', '-12%'; '0%' rather than '-0%' for a gap barely touched."""
    if value is None:
        return ""
    return "0%" if abs(value) < 0.005 else f"{value:.0%}"


def _pct(value: Any) -> str:
    return "" if value is None else f"{float(value):.1%}"


def _num(value: Any) -> str:
    return "" if value is None else f"{float(value):.3g}"


def _load(values: Any) -> str:
    return f"{values[0]:.1f}" if values else "?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options (``--quick`` shrinks everything to a check of the whole path)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(
        parser,
        out="generate_real.json",
        doc="generation.md",
        resume="Skip the set-up and results already in --out.",
        quick="Tiny scale: a check of the whole path in minutes.",
    )
    parser.add_argument("--base", default=DEFAULT_BASE)
    parser.add_argument("--tasks", default=",".join(TASKS), help="Comma-separated tasks (at least 3).")
    parser.add_argument("--held-out", default="", help="Comma-separated tasks to leave out in turn; default all.")
    parser.add_argument("--train-rows", type=int, default=64, help="Training rows of each task's LoRA.")
    parser.add_argument("--eval-rows", type=int, default=24, help="Held-out rows scored per task.")
    parser.add_argument("--examples", type=int, default=30, help="Rows a task vector is computed from.")
    parser.add_argument("--steps", type=int, default=32, help="Steps of each task's LoRA (batch 4).")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rank", type=int, default=2, help="LoRA rank of every task's adapter.")
    parser.add_argument("--targets", default="q_proj,v_proj", help="LoRA target modules of every task's adapter.")
    parser.add_argument("--keep", type=int, default=8, help="Adapters kept along each task's training.")
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "paper"), help="Generator network.")
    parser.add_argument("--epochs", type=int, default=100, help="Generator epochs (per left-out task).")
    parser.add_argument("--gen-lr", type=float, default=2e-4, help="Generator learning rate.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work", default=str(DEFAULT_WORK), help="The embedded studio and the adapter cache.")
    parser.add_argument(
        "--extra", nargs="*", default=[], help="Other runs' JSONs (other generator settings) shown on the page."
    )
    parser.add_argument("--render-only", action="store_true", help="Rewrite --doc from --out; no runs.")
    args = parser.parse_args(argv)
    unknown = [t for t in args.tasks.split(",") if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    if len(args.tasks.split(",")) < 3:
        parser.error("--tasks needs at least 3 tasks (a generator learns at least two besides the left-out one)")
    if args.quick:
        args.train_rows, args.eval_rows, args.examples, args.steps, args.keep = 8, 4, 4, 4, 2
        args.rank, args.epochs, args.max_length = 1, 3, 64
        args.held_out = args.held_out or args.tasks.split(",")[0]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        out = Path(args.out)
        record = json.loads(out.read_text()) if out.is_file() else placeholder(args)
        if args.extra:
            record["extra"] = list(args.extra)
        Path(args.doc).write_text(render(record), encoding="utf-8")
        print(f"wrote {args.doc} from {out if out.is_file() else 'the default set-up (not yet run)'}")
        return 0
    start_run(args)
    run(args)
    print(f"wrote {args.out} and {args.doc}")
    return 0


def placeholder(args: argparse.Namespace) -> dict[str, Any]:
    """The record of a run not yet made: its config and the documented command (for the page's header)."""
    return {
        "config": {**config_of(args), "data": "/work/shared/data"},
        "command": "python scripts/generate_real.py --data /work/shared/data",
        "results": {},
    }


if __name__ == "__main__":
    raise SystemExit(main())
