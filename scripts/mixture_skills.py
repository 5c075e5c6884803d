"""A MeteoRA mixture on real data: the specialists of scripts/merge_skills.py (GSM8K, E2E, Alpaca) as routed experts.

The ``mixture`` job (the studio's own path: ``JobService.submit`` + ``execute_job`` on the
embedded registry of ``--work``) gets the two specialists and their training sets and trains
the per-module routers (experts frozen). Then, on HELD-OUT rows of both tasks:

- routing accuracy: the share of (token, gated module) top-1 choices that pick the row's own
  task's expert, on the test/dev rows (and the job's own held-out split of the training sets);
- each task's response-token loss (the eval job) against its specialist (target: within 5 %)
  and against the linear merges of the same two adapters;
- one composite prompt (a maths question and a restaurant description in one message): which
  expert each token chose in each layer, as a PNG heatmap plus the plotly figure's JSON.

Specialists, merges and scores come from the cache that merge_skills.py keeps in ``--work``
(same set-up arguments = same specialists); whatever is missing is made here.

    python scripts/mixture_skills.py --steps 16 --train-rows 64 --lr 1e-3 --max-length 256 --eval-rows 12 \
        --mixture-steps 10 --mixture-batch 4 --mixture-lr 5e-3 --data DIR   # the documented run
    python scripts/mixture_skills.py --steps 16 --train-rows 64 --lr 1e-3 --max-length 256 --eval-rows 12 \
        --skills gsm8k,e2e,alpaca --mixture-steps 60 --mixture-batch 4 --mixture-lr 5e-3 \
        --mixture-max-length 128 --data DIR   # three experts (+ the Alpaca specialist): mixture_skills_three.json
    python scripts/mixture_skills.py ... --render    # rewrite docs/results/mixture.md from both JSONs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from merge_skills import (  # noqa: E402
    E2E_PROMPT,
    HELD_OUT,
    MERGE_KEYS,  # noqa: E402
    NUMBERS,
    SPECIALISTS,
    TASK_NAMES,
    Cache,
    _keep,
    add_setup_arguments,
    merge_prefix,
    prepare_specialists,
    score,
    settle_run_json,
    setup_key,
    skills_of,
)

from bench.common import (  # noqa: E402
    DOCS_RESULTS_DIR,
    RESULTS_DIR,
    data_file,
    machine_info,
    markdown_table,
    prepare_env,
    read_jsonl,
    use_data,
    write_json,
)

LINEAR = {"linear, 0.5 + 0.5": {"method": "linear"}, "linear, 1 + 1": {"method": "linear", "weights": [1.0, 1.0]}}
# What each skill's part of the composite prompt is called in the switch summary.
HELD_FILES = {"gsm8k": "gsm8k/test.jsonl", "e2e": "e2e_nlg/dev.jsonl", "alpaca": "alpaca/test.jsonl"}
PART_NAMES = {"gsm8k": "maths", "e2e": "restaurant", "alpaca": "instruction"}


def linear_merges(n: int) -> dict[str, dict[str, Any]]:
    """The linear merges the mixture is compared with: the mean and the plain sum of the ``n`` experts."""
    if n == 2:
        return LINEAR
    return {
        f"linear, 1/{n} each": {"method": "linear"},
        "linear, " + " + ".join(["1"] * n): {"method": "linear", "weights": [1.0] * n},
    }


# Heatmap rows: one attention and one MLP module per layer keep the figure readable (all modules are routed).
HEATMAP_MODULES = ("self_attn.q_proj", "mlp.down_proj")
EXPERT_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))


def composite_prompt(eval_rows: int) -> tuple[str, str, str]:
    """(whole message, maths part, restaurant part): held-out rows just past the scored ones."""
    maths = read_jsonl(data_file("gsm8k", "test.jsonl"))[eval_rows]["question"]
    restaurant = E2E_PROMPT.format(mr=read_jsonl(data_file("e2e_nlg", "dev.jsonl"))[eval_rows]["mr"])
    return f"{maths}\nAlso: {restaurant}", maths, restaurant


def composite_parts(skills: tuple[str, ...], eval_rows: int) -> list[str]:
    """One held-out request per skill (the rows just past the scored ones), in expert order."""
    parts = []
    for skill in skills:
        if skill == "gsm8k":
            parts.append(read_jsonl(data_file("gsm8k", "test.jsonl"))[eval_rows]["question"])
        elif skill == "e2e":
            parts.append(E2E_PROMPT.format(mr=read_jsonl(data_file("e2e_nlg", "dev.jsonl"))[eval_rows]["mr"]))
        else:
            row = read_jsonl(data_file("alpaca", "test.jsonl"))[eval_rows]
            parts.append(row["instruction"] + (f"\n{row['input']}" if row.get("input") else ""))
    return parts


def route_composite(
    mixture_path: str, base: str, settings: Any, text: str, maths: str, parts: list[str] | None = None
) -> dict[str, Any]:
    """Each token's top-1 expert in every gated module for ``text`` (chat-formatted like training rows).

    ``maths_tokens`` is where the first part (``maths``) ends; with ``parts`` (the parts of ``text``
    in order) ``cuts`` has where every part but the last ends.
    """
    from studio.composition.meteora_bundle import load_bundle
    from studio.composition.meteora_training import prompt_routing
    from studio.models.base_models import resolve_base_model
    from studio.training.models import load_base_model, load_tokenizer_for
    from studio.training.tokenise import ensure_chat_template

    base_path = resolve_base_model(base, settings).path
    tokenizer = load_tokenizer_for(base_path)  # the bundle keeps no tokenizer when its experts have none
    ensure_chat_template(tokenizer)
    mixture = load_bundle(load_base_model(base_path, "causal-lm"), mixture_path).eval()
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    tokens, choices = prompt_routing(mixture, tokenizer, chat)
    # Tokens up to the end of the maths part (its last token included) vs the rest: where the switch should be.
    cut = len(tokenizer(chat[: chat.index(maths) + len(maths)])["input_ids"])
    cuts, position = [], 0
    for part in (parts or [maths, ""])[:-1]:
        position = chat.index(part, position) + len(part)
        cuts.append(len(tokenizer(chat[:position])["input_ids"]))
    return {"tokens": tokens, "choices": choices, "maths_tokens": cut, "cuts": cuts}


def switch_summary(routed: dict[str, Any], skills: tuple[str, ...] = ("gsm8k", "e2e")) -> dict[str, float]:
    """Share of top-1 choices on each part of the prompt that went to that part's expert (j-th part: expert j).

    The last part runs to the end (the chat template's closing tokens included). Keys:
    ``maths_part_to_gsm8k``, ``restaurant_part_to_e2e``, ``instruction_part_to_alpaca``.
    """
    cuts = routed.get("cuts") or [routed["maths_tokens"]]
    choices = list(routed["choices"].values())
    bounds = [0, *cuts, None]
    summary = {}
    for j, skill in enumerate(skills):
        picked = [e for row in choices for e in row[bounds[j] : bounds[j + 1]]]
        summary[f"{PART_NAMES[skill]}_part_to_{skill}"] = sum(e == j for e in picked) / max(1, len(picked))
    return summary


def heatmap_rows(choices: dict[str, list[int]]) -> dict[str, list[int]]:
    return {m: row for m, row in choices.items() if m.endswith(HEATMAP_MODULES)}


def save_png(choices: dict[str, list[int]], cut: int | list[int], path: Path, cell: tuple[int, int] = (5, 6)) -> Path:
    """The heatmap as a PNG drawn with Pillow (no kaleido here): one row per module, one column per token.

    Colours: expert 0 (GSM8K) blue, expert 1 (E2E) orange, expert 2 (Alpaca) green; a black
    line marks where each part of the prompt ends (``cut``: one token index or several).
    """
    from PIL import Image, ImageDraw

    rows = list(choices.values())
    width, height = cell
    n_tokens = len(rows[0])
    image = Image.new("RGB", (n_tokens * width + 2, len(rows) * height + 2), "white")
    draw = ImageDraw.Draw(image)
    for r, row in enumerate(rows):
        for t, expert in enumerate(row):
            x, y = 1 + t * width, 1 + r * height
            draw.rectangle([x, y, x + width - 1, y + height - 1], fill=EXPERT_COLOURS[expert % len(EXPERT_COLOURS)])
    for position in [cut] if isinstance(cut, int) else cut:
        x = 1 + position * width
        draw.line([x, 0, x, image.height], fill="black", width=2)
    image.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setup_arguments(parser)
    parser.add_argument("--mixture-steps", type=int, default=60, help="router training steps")
    parser.add_argument("--mixture-batch", type=int, default=8, help="rows per router step, drawn from both tasks")
    parser.add_argument("--mixture-lr", type=float, default=5e-4, help="the routers' peak learning rate")
    parser.add_argument(
        "--mixture-max-length",
        type=int,
        default=None,
        help="truncate router-training rows to this many tokens (default --max-length): shorter rows, cheaper steps",
    )
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument(
        "--wait", type=float, default=0, help="seconds to wait for merge_skills.py (running beside) to score the rest"
    )
    parser.add_argument("--doc", default=str(DOCS_RESULTS_DIR / "mixture.md"))
    parser.add_argument("--two", default=str(RESULTS_DIR / "mixture_skills.json"), help="the two-expert run's JSON")
    parser.add_argument(
        "--three", default=str(RESULTS_DIR / "mixture_skills_three.json"), help="the three-expert run's JSON"
    )
    parser.add_argument("--out", default=None, help="this run's JSON (default: --two or --three by --skills)")
    parser.add_argument(
        "--earlier",
        nargs="*",
        default=[str(RESULTS_DIR / "mixture_skills_three_60steps.json")],
        help="earlier three-expert runs' JSONs, shown below the latest (missing files are skipped)",
    )
    parser.add_argument("--render", action="store_true", help="only rewrite --doc from the JSONs of --two and --three")
    args = parser.parse_args()
    use_data(args.data)
    skills = skills_of(args)
    settle_run_json(args, skills)
    if args.render:
        Path(args.doc).write_text(render_doc(args.two, args.three, tuple(args.earlier)), encoding="utf-8")
        return
    prepare_env(threads=args.threads)
    began = time.perf_counter()
    load_before = machine_info()["loadavg_1_5_15"]

    studio, shared, data, trained = prepare_specialists(args)
    experts = [trained[skill]["adapter_id"] for skill in skills]
    cache = Cache(Path(args.work), setup_key(args), name="mixture_state.json")  # merge_skills.py may run beside

    router_length = args.mixture_max_length or args.max_length
    label = f"mixture, top-{args.top_k}, {args.mixture_steps} steps × {args.mixture_batch}, lr {args.mixture_lr:g}"
    if len(skills) != 2:
        label = f"mixture of {len(skills)}, top-{args.top_k}, {args.mixture_steps} steps × {args.mixture_batch}"
        label += f", lr {args.mixture_lr:g}, max_length {router_length}"
    mixture = cache.get("mixtures", label)
    if not mixture:
        result = studio.run(
            {
                "kind": "mixture",
                "name": label,
                "adapter_ids": experts,
                "dataset_ids": [data[f"{skill}-train"] for skill in skills],
                "steps": args.mixture_steps,
                "settings": {
                    "top_k": args.top_k,
                    "batch_size": args.mixture_batch,
                    "learning_rate": args.mixture_lr,
                    "max_length": router_length,
                },
            }
        )
        mixture = cache.put(
            "mixtures",
            label,
            _keep(result, ("adapter_id", "adapter_path", "steps", "seconds", "gate_accuracy", "train_lm_loss"))
            | {k: v for k, v in result.items() if k.startswith("gate_accuracy_task")},
        )
    row = studio.services.registry.get_adapter(mixture["adapter_id"])
    held_out_routing = cache.get("routing", label) or cache.put(
        "routing", label, routing_on_test_rows(studio, row, data, args)
    )
    parts = composite_parts(skills, args.eval_rows)
    text = "\nAlso: ".join(parts)
    routed = route_composite(row.path, args.base, studio.settings, text, parts[0], parts)
    shown = heatmap_rows(routed["choices"])
    suffix = "" if len(skills) == 2 else f"_{NUMBERS[len(skills)]}"
    png = save_png(shown, routed["cuts"], Path(args.doc).parent / f"mixture_routing{suffix}.png")
    figure_json = Path(args.doc).parent / f"mixture_routing{suffix}.json"
    save_figure_json(shown, routed, figure_json, [f"{TASK_NAMES[s]} expert" for s in skills])
    scores = {label: score(studio, cache, data, label, {"adapter_id": mixture["adapter_id"]}, args.eval_rows, skills)}
    record = {
        "args": {k: v for k, v in vars(args).items() if k not in ("render", "two", "three")},
        "machine": machine_info(),
        "loadavg_at_start": load_before,
        "wall_seconds": time.perf_counter() - began,
        "label": label,
        "mixture": mixture,
        "routing_test_rows": held_out_routing,
        "eval_loss": scores,
        "composite": {
            "prompt": text,
            "tokens": len(routed["tokens"]),
            "maths_tokens": routed["maths_tokens"],
            "cuts": routed["cuts"],
            "modules": len(routed["choices"]),
            **switch_summary(routed, skills),
            "png": png.name,
            "figure_json": figure_json.name,
        },
    }
    write_json(args.out, record)  # the mixture's own numbers first: the references below may take a while
    scores.update(reference_scores(studio, shared, cache, data, args, experts))
    record["wall_seconds"] = time.perf_counter() - began
    write_json(args.out, record)
    Path(args.doc).write_text(render_doc(args.two, args.three, tuple(args.earlier)), encoding="utf-8")
    print(Path(args.doc).read_text())


def reference_scores(
    studio: Any, shared: Cache, cache: Cache, data: dict[str, int], args: argparse.Namespace, experts: list[int]
) -> dict[str, dict[str, float]]:
    """Base, specialists and linear merges: merge_skills.py's scores when it has them (waits up to --wait s)."""
    skills = skills_of(args)
    prefix = merge_prefix(skills)
    linear = linear_merges(len(skills))
    labels = ["base model", *(SPECIALISTS[s] for s in skills), *(f"{prefix}{m}" for m in linear)]
    deadline = time.monotonic() + args.wait
    while True:
        done = Cache(Path(args.work), setup_key(args)).state.get("scores", {})
        if all(set(skills) <= set(done.get(label, {})) for label in labels) or time.monotonic() > deadline:
            break
        time.sleep(20)
    targets = {"base model": {"base_model": args.base}}
    targets.update({SPECIALISTS[s]: {"adapter_id": i} for s, i in zip(skills, experts, strict=True)})
    for merge, fields in linear.items():
        name = f"{prefix}{merge}"
        found = Cache(Path(args.work), setup_key(args)).get("merges", name) or cache.get("merges", name)
        if not found:
            result = studio.run({"kind": "merge", "adapter_ids": experts, "name": merge, **fields})
            found = cache.put("merges", name, _keep(result, MERGE_KEYS))
        targets[name] = {"adapter_id": found["adapter_id"]}
    out = {}
    for label in labels:
        have = done.get(label) or {}
        if set(skills) <= set(have):
            out[label] = have
        else:
            if have and not cache.get("scores", label):
                cache.put("scores", label, have)  # score only the missing tasks
            out[label] = score(studio, cache, data, label, targets[label], args.eval_rows, skills)
    return out


def routing_on_test_rows(studio: Any, row: Any, data: dict[str, int], args: argparse.Namespace) -> dict[str, Any]:
    """Routing report of the mixture on the scored held-out rows (gsm8k test, e2e dev), not the job's split."""
    from studio.composition.meteora_bundle import load_bundle
    from studio.composition.meteora_training import routing_report
    from studio.models.base_models import resolve_base_model
    from studio.training.data import read_jsonl as read_rows
    from studio.training.models import load_base_model, load_tokenizer_for

    registry = studio.services.registry
    names = [HELD_OUT[skill] for skill in skills_of(args)]
    rows = [read_rows(registry.get_dataset(data[name]).stored_path) for name in names]
    base_path = resolve_base_model(args.base, studio.settings).path
    mixture = load_bundle(load_base_model(base_path, "causal-lm"), row.path).eval()
    return routing_report(mixture, load_tokenizer_for(base_path), rows, args.max_length)


def save_figure_json(
    shown: dict[str, list[int]], routed: dict[str, Any], path: Path, names: list[str] | None = None
) -> Path:
    """The studio's plotly heatmap (what the Compose tab shows) as JSON: kaleido is not installed for a PNG."""
    from studio.composition.meteora_charts import routing_heatmap

    figure = routing_heatmap(routed["tokens"], shown, names or ["GSM8K expert", "E2E expert"])
    path.write_text(figure.to_json(), encoding="utf-8")
    return path


def render_doc(two: str, three: str, earlier: tuple[str, ...] = ()) -> str:
    """docs/results/mixture.md: the three-expert run first (when its JSON is there), then ``earlier`` runs, then the
    two-expert run."""
    paths = [path for path in (three, *earlier, two) if path and Path(path).is_file()]
    runs = [json.loads(Path(path).read_text()) for path in paths]
    names = [Path(path).name for path in paths]
    if not runs:
        return ""
    text = render(runs[0], names[0])
    same = [r for r in runs if len(skills_of(r["args"])) == len(skills_of(runs[0]["args"]))]
    if len(same) > 1:  # the router runs side by side: what more steps / another lr bought
        marker = "## Loss against"
        text = text.replace(marker, router_runs_table(same) + "\n\n" + marker, 1)
    for record, name in zip(runs[1:], names[1:], strict=True):
        body = render(record, name)
        body = body[body.index("## Set-up") :].replace("## ", "### ")
        n = NUMBERS[len(skills_of(record["args"]))]
        steps = record["mixture"]["steps"]
        text += f"\n## Earlier run: {n} experts ({', '.join(_names(record))}), {steps} router steps\n\n{body}"
    return text


def router_runs_table(runs: list[dict[str, Any]]) -> str:
    """One row per router training run of the same experts: its settings and held-out routing accuracy."""
    rows = []
    for record in runs:
        args, routing, mixture = record["args"], record["routing_test_rows"], record["mixture"]
        rows.append(
            [
                f"{mixture['steps']} × {args['mixture_batch']}",
                f"{args['mixture_lr']:g}",
                f"{mixture['seconds']:.0f} s",
                f"{routing['accuracy']:.1%}",
                *(f"{v:.1%}" for v in routing["per_task"]),
                f"{mixture['gate_accuracy']:.1%}" if mixture.get("gate_accuracy") is not None else "",
            ]
        )
    names = _names(runs[0])
    headers = ["router steps × batch", "lr", "job time", "held-out routing", *(f"{n} rows" for n in names)]
    return "Router runs of these experts (latest first):\n\n" + markdown_table([*headers, "job's own split"], rows)


def usage_table(record: dict[str, Any]) -> str:
    """Where each task's held-out tokens were routed: share of top-1 choices per expert (rows sum to 100 %)."""
    names = _names(record)
    rows = [
        [f"{name} rows", *(f"{v:.1%}" for v in usage)]
        for name, usage in zip(names, record["routing_test_rows"]["usage"], strict=True)
    ]
    return markdown_table(["held-out rows", *(f"→ {n} expert" for n in names)], rows)


def _leaks(record: dict[str, Any]) -> str:
    """``; E2E rows go to the Alpaca expert 34.3 % of the time``: where each task under 90 % leaks most."""
    routing, names = record["routing_test_rows"], _names(record)
    if not routing.get("usage"):
        return " and lean to another expert"
    parts = []
    for j, (name, usage) in enumerate(zip(names, routing["usage"], strict=True)):
        if routing["per_task"][j] < 0.9:
            other = max((k for k in range(len(usage)) if k != j), key=lambda k: usage[k])
            parts.append(f"{name} rows go to the {names[other]} expert {usage[other]:.1%} of the time")
    return "; " + ", ".join(parts)


def _names(record: dict[str, Any]) -> list[str]:
    return [TASK_NAMES[s] for s in skills_of(record["args"])]


def render(record: dict[str, Any], json_name: str = "mixture_skills.json") -> str:
    """docs/results/mixture.md (or its earlier-run section) from one run's record."""
    args, scores, label = record["args"], record["eval_loss"], record["label"]
    mixture, routing, composite = record["mixture"], record["routing_test_rows"], record["composite"]
    skills = skills_of(args)
    names = _names(record)
    prefix = merge_prefix(skills)
    linear = [f"{prefix}{m}" for m in linear_merges(len(skills))]
    rows = []
    for task, name in zip(skills, names, strict=True):
        mine, own = scores[label][task], scores[SPECIALISTS[task]][task]
        rows.append(
            [
                name,
                f"{scores['base model'][task]:.3f}",
                f"{own:.3f}",
                f"{mine:.3f}",
                f"{(mine - own) / own * 100:+.1f} %",
                "yes" if mine <= own * 1.05 else "no",
                *(f"{scores[m][task]:.3f}" if task in scores.get(m, {}) else "not run" for m in linear),
            ]
        )
    machine = record["machine"]
    load = record["loadavg_at_start"]
    job_acc = mixture.get("gate_accuracy")
    low = ", ".join(n for n, v in zip(names, routing["per_task"], strict=True) if v < 0.9)
    per_task = ", ".join(f"{n} rows {v:.1%}" for n, v in zip(names, routing["per_task"], strict=True))
    router_length = args.get("mixture_max_length") or args["max_length"]
    colours = ", ".join(
        f"{colour} = {n} expert" for colour, n in zip(("blue", "orange", "green", "red"), names, strict=False)
    )
    part_names = [PART_NAMES[s] for s in skills]
    switch = ", ".join(
        f"{composite.get(f'{p}_part_to_{s}', 0):.0%} of the choices on the {p} part go to the {n} expert"
        for p, s, n in zip(part_names, skills, names, strict=True)
    )
    cuts = composite.get("cuts") or [composite["maths_tokens"]]
    listing = " and ".join([", ".join(names[:-1]), names[-1]])
    return "\n".join(
        [
            f"# A MeteoRA mixture on real data: the {listing} specialists as routed experts",
            "",
            f"Generated by `scripts/mixture_skills.py`; raw numbers in `bench/results/{json_name}`.",
            "",
            "## Set-up",
            "",
            f"- Experts: the {NUMBERS[len(skills)]} specialists of [merging.md](merging.md) (`{args['base']}`, LoRA"
            f" r 8, {args['steps']} steps × batch 4 on the first {args['train_rows']} rows of"
            f" {' / '.join(names)} train), reused from the same embedded studio.",
            f"- The studio's `mixture` job: top-{args['top_k']} of {len(skills)} experts, temperature 1, gate loss"
            f" weight 50 (the spec's defaults), experts frozen, {mixture['steps']} router steps × batch"
            f" {args['mixture_batch']} (lr {args['mixture_lr']:g}) over all training sets (90 %; the job"
            f" holds out 10 % for its own gate accuracy), rows truncated to {router_length} tokens for router"
            " training.",
            f"- Scores on the first {args['eval_rows']} held-out rows of each task ("
            + ", ".join(f"`{HELD_FILES[s]}`" for s in skills)
            + ", never trained on): the eval job's response-token loss; routing accuracy = share of (token, gated"
            " module) top-1 choices that pick the row's own task's expert, over the response tokens"
            f" (max_length {args['max_length']}).",
            f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch thread(s);"
            f" wall time {record['wall_seconds'] / 60:.1f} min (load average {load[0]:.1f} at the start,"
            f" {machine['loadavg_1_5_15'][0]:.1f} at the end; shared machine); the mixture job took"
            f" {mixture['seconds']:.0f} s.",
            "",
            "## Routing",
            "",
            f"- Held-out test/dev rows: **{routing['accuracy']:.1%}** of the top-1 choices pick the task's expert"
            f" ({per_task})."
            + (f" The job's own held-out split of the training sets: {job_acc:.1%}." if job_acc is not None else ""),
            "",
            *([usage_table(record), ""] if routing.get("usage") else []),
            *(
                [
                    f"- **Below the 90 % target on {low} rows** after {mixture['steps']} router steps ×"
                    f" {args['mixture_batch']} rows (a loaded 2-core CPU): the routers are under-trained"
                    + _leaks(record)
                    + ". With top-2 every token still blends two experts (only the weights"
                    " differ), which is why the losses below can stay close to the specialists'.",
                    "",
                ]
                if min(routing["per_task"]) < 0.9
                else []
            ),
            "## Loss against the specialists and the linear merges",
            "",
            markdown_table(
                [
                    "task",
                    "base",
                    "its specialist",
                    "mixture",
                    "mixture vs specialist",
                    "within 5 %?",
                    *(m.removeprefix(prefix) for m in linear),
                ],
                rows,
            ),
            "",
            "## A composite prompt",
            "",
            f"One user message with one held-out request per task ({', '.join(part_names)}; rows just past the"
            " scored ones), joined by `Also:`:",
            "",
            "```text",
            composite["prompt"],
            "```",
            "",
            f"![routing heatmap]({composite['png']})",
            "",
            f"Rows: the q_proj and down_proj of every layer (first layer on top; all {composite['modules']}"
            " gated modules are routed), columns: the"
            f" {composite['tokens']} tokens of the chat-formatted prompt; {colours}; the black"
            f" line{'s mark' if len(cuts) > 1 else ' marks'} the end of each part but the last (token"
            f" {', '.join(str(c) for c in cuts)}). Over all modules, {switch} (the last part includes the chat"
            " template's closing tokens). kaleido is not installed, so the PNG is drawn with"
            " Pillow; the studio's interactive plotly figure (the Compose tab's heatmap, same rows) is"
            f" `{composite['figure_json']}` (`plotly.io.read_json`).",
            "",
        ]
    )


if __name__ == "__main__":
    main()
