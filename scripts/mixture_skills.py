"""A MeteoRA mixture on real data: the GSM8K and E2E specialists of scripts/merge_skills.py as two routed experts.

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
    python scripts/mixture_skills.py ... --render    # rewrite docs/results/mixture.md from the JSON
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
    SPECIALISTS,
    Cache,
    _keep,
    add_setup_arguments,
    prepare_specialists,
    score,
    setup_key,
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
# Heatmap rows: one attention and one MLP module per layer keep the figure readable (all modules are routed).
HEATMAP_MODULES = ("self_attn.q_proj", "mlp.down_proj")
EXPERT_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))


def composite_prompt(eval_rows: int) -> tuple[str, str, str]:
    """(whole message, maths part, restaurant part): held-out rows just past the scored ones."""
    maths = read_jsonl(data_file("gsm8k", "test.jsonl"))[eval_rows]["question"]
    restaurant = E2E_PROMPT.format(mr=read_jsonl(data_file("e2e_nlg", "dev.jsonl"))[eval_rows]["mr"])
    return f"{maths}\nAlso: {restaurant}", maths, restaurant


def route_composite(mixture_path: str, base: str, settings: Any, text: str, maths: str) -> dict[str, Any]:
    """Each token's top-1 expert in every gated module for ``text`` (chat-formatted like training rows)."""
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
    return {"tokens": tokens, "choices": choices, "maths_tokens": cut}


def switch_summary(routed: dict[str, Any]) -> dict[str, float]:
    """Share of top-1 choices that went to expert 0 (GSM8K) on the maths part and on the restaurant part."""
    cut, choices = routed["maths_tokens"], routed["choices"].values()
    maths = [e for row in choices for e in row[:cut]]
    rest = [e for row in choices for e in row[cut:]]
    return {
        "maths_part_to_gsm8k": sum(e == 0 for e in maths) / max(1, len(maths)),
        "restaurant_part_to_e2e": sum(e == 1 for e in rest) / max(1, len(rest)),
    }


def heatmap_rows(choices: dict[str, list[int]]) -> dict[str, list[int]]:
    return {m: row for m, row in choices.items() if m.endswith(HEATMAP_MODULES)}


def save_png(choices: dict[str, list[int]], cut: int, path: Path, cell: tuple[int, int] = (5, 6)) -> Path:
    """The heatmap as a PNG drawn with Pillow (no kaleido here): one row per module, one column per token.

    Colours: expert 0 (GSM8K) blue, expert 1 (E2E) orange; a black line marks where the
    maths part of the prompt ends; thin grey lines separate layers.
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
    x = 1 + cut * width
    draw.line([x, 0, x, image.height], fill="black", width=2)
    image.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setup_arguments(parser)
    parser.add_argument("--mixture-steps", type=int, default=60, help="router training steps")
    parser.add_argument("--mixture-batch", type=int, default=8, help="rows per router step, drawn from both tasks")
    parser.add_argument("--mixture-lr", type=float, default=5e-4, help="the routers' peak learning rate")
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument(
        "--wait", type=float, default=0, help="seconds to wait for merge_skills.py (running beside) to score the rest"
    )
    parser.add_argument("--doc", default=str(DOCS_RESULTS_DIR / "mixture.md"))
    parser.add_argument("--out", default=str(RESULTS_DIR / "mixture_skills.json"))
    parser.add_argument("--render", action="store_true", help="only rewrite --doc from the JSON of --out")
    args = parser.parse_args()
    use_data(args.data)
    if args.render:
        Path(args.doc).write_text(render(json.loads(Path(args.out).read_text())), encoding="utf-8")
        return
    prepare_env(threads=args.threads)
    began = time.perf_counter()
    load_before = machine_info()["loadavg_1_5_15"]

    studio, shared, data, trained = prepare_specialists(args)
    a, b = trained["gsm8k"]["adapter_id"], trained["e2e"]["adapter_id"]
    cache = Cache(Path(args.work), setup_key(args), name="mixture_state.json")  # merge_skills.py may run beside

    label = f"mixture, top-{args.top_k}, {args.mixture_steps} steps × {args.mixture_batch}, lr {args.mixture_lr:g}"
    mixture = cache.get("mixtures", label)
    if not mixture:
        result = studio.run(
            {
                "kind": "mixture",
                "name": label,
                "adapter_ids": [a, b],
                "dataset_ids": [data["gsm8k-train"], data["e2e-train"]],
                "steps": args.mixture_steps,
                "settings": {
                    "top_k": args.top_k,
                    "batch_size": args.mixture_batch,
                    "learning_rate": args.mixture_lr,
                    "max_length": args.max_length,
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
    text, maths, _ = composite_prompt(args.eval_rows)
    routed = route_composite(row.path, args.base, studio.settings, text, maths)
    shown = heatmap_rows(routed["choices"])
    png = save_png(shown, routed["maths_tokens"], Path(args.doc).parent / "mixture_routing.png")
    figure_json = Path(args.doc).parent / "mixture_routing.json"
    save_figure_json(shown, routed, figure_json)
    scores = {label: score(studio, cache, data, label, {"adapter_id": mixture["adapter_id"]}, args.eval_rows)}
    scores.update(reference_scores(studio, shared, cache, data, args, (a, b)))

    record = {
        "args": {k: v for k, v in vars(args).items() if k != "render"},
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
            "modules": len(routed["choices"]),
            **switch_summary(routed),
            "png": png.name,
            "figure_json": figure_json.name,
        },
    }
    write_json(args.out, record)
    Path(args.doc).write_text(render(record), encoding="utf-8")
    print(Path(args.doc).read_text())


def reference_scores(
    studio: Any, shared: Cache, cache: Cache, data: dict[str, int], args: argparse.Namespace, experts: tuple[int, int]
) -> dict[str, dict[str, float]]:
    """Base, specialists and linear merges: merge_skills.py's scores when it has them (waits up to --wait s)."""
    labels = ["base model", *SPECIALISTS.values(), *(f"merge of A and B: {m}" for m in LINEAR)]
    deadline = time.monotonic() + args.wait
    while True:
        done = Cache(Path(args.work), setup_key(args)).state.get("scores", {})
        if all(label in done for label in labels) or time.monotonic() > deadline:
            break
        time.sleep(20)
    a, b = experts
    targets = {"base model": {"base_model": args.base}, SPECIALISTS["gsm8k"]: {"adapter_id": a}}
    targets[SPECIALISTS["e2e"]] = {"adapter_id": b}
    for merge, fields in LINEAR.items():
        found = shared.get("merges", merge) or Cache(Path(args.work), setup_key(args)).get("merges", merge)
        found = found or cache.get("merges", merge)
        if not found:
            result = studio.run({"kind": "merge", "adapter_ids": [a, b], "name": merge, **fields})
            found = cache.put("merges", merge, _keep(result, ("adapter_id", "method", "weights", "seconds")))
        targets[f"merge of A and B: {merge}"] = {"adapter_id": found["adapter_id"]}
    return {
        label: done.get(label) or score(studio, cache, data, label, targets[label], args.eval_rows) for label in labels
    }


def routing_on_test_rows(studio: Any, row: Any, data: dict[str, int], args: argparse.Namespace) -> dict[str, Any]:
    """Routing report of the mixture on the scored held-out rows (gsm8k test, e2e dev), not the job's split."""
    from studio.composition.meteora_bundle import load_bundle
    from studio.composition.meteora_training import routing_report
    from studio.models.base_models import resolve_base_model
    from studio.training.data import read_jsonl as read_rows
    from studio.training.models import load_base_model, load_tokenizer_for

    registry = studio.services.registry
    rows = [read_rows(registry.get_dataset(data[name]).stored_path) for name in ("gsm8k-test", "e2e-dev")]
    base_path = resolve_base_model(args.base, studio.settings).path
    mixture = load_bundle(load_base_model(base_path, "causal-lm"), row.path).eval()
    return routing_report(mixture, load_tokenizer_for(base_path), rows, args.max_length)


def save_figure_json(shown: dict[str, list[int]], routed: dict[str, Any], path: Path) -> Path:
    """The studio's plotly heatmap (what the Compose tab shows) as JSON: kaleido is not installed for a PNG."""
    from studio.composition.meteora_charts import routing_heatmap

    figure = routing_heatmap(routed["tokens"], shown, ["GSM8K expert", "E2E expert"])
    path.write_text(figure.to_json(), encoding="utf-8")
    return path


def render(record: dict[str, Any]) -> str:
    """docs/results/mixture.md from the run's record."""
    args, scores, label = record["args"], record["eval_loss"], record["label"]
    mixture, routing, composite = record["mixture"], record["routing_test_rows"], record["composite"]
    rows = []
    for task, specialist in SPECIALISTS.items():
        mine, own = scores[label][task], scores[specialist][task]
        rows.append(
            [
                task.upper() if task == "e2e" else "GSM8K",
                f"{scores['base model'][task]:.3f}",
                f"{own:.3f}",
                f"{mine:.3f}",
                f"{(mine - own) / own * 100:+.1f} %",
                "yes" if mine <= own * 1.05 else "no",
                f"{scores['merge of A and B: linear, 0.5 + 0.5'][task]:.3f}",
                f"{scores['merge of A and B: linear, 1 + 1'][task]:.3f}",
            ]
        )
    machine = record["machine"]
    load = record["loadavg_at_start"]
    job_acc = mixture.get("gate_accuracy")
    low = ", ".join(n for n, v in zip(("GSM8K", "E2E"), routing["per_task"], strict=True) if v < 0.9)
    return "\n".join(
        [
            "# A MeteoRA mixture on real data: the GSM8K and E2E specialists as routed experts",
            "",
            "Generated by `scripts/mixture_skills.py`; raw numbers in `bench/results/mixture_skills.json`.",
            "",
            "## Set-up",
            "",
            f"- Experts: the two specialists of [merging.md](merging.md) (`{args['base']}`, LoRA r 8,"
            f" {args['steps']} steps × batch 4 on the first {args['train_rows']} rows of GSM8K train / E2E train),"
            " reused from the same embedded studio.",
            f"- The studio's `mixture` job: top-{args['top_k']} routing, temperature 1, gate loss weight 50,"
            f" experts frozen, {mixture['steps']} router steps × batch {args['mixture_batch']} (lr"
            f" {args['mixture_lr']:g}) over both training sets (90 %; the job"
            f" holds out 10 % for its own gate accuracy), max_length {args['max_length']}.",
            f"- Scores on the first {args['eval_rows']} rows of `gsm8k/test.jsonl` and `e2e_nlg/dev.jsonl`"
            " (never trained on): the eval job's response-token loss; routing accuracy = share of (token, gated"
            " module) top-1 choices that pick the row's own task's expert, over the response tokens.",
            f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch thread(s);"
            f" wall time {record['wall_seconds'] / 60:.1f} min (load average {load[0]:.1f} at the start,"
            f" {machine['loadavg_1_5_15'][0]:.1f} at the end; shared machine); the mixture job took"
            f" {mixture['seconds']:.0f} s.",
            "",
            "## Routing",
            "",
            f"- Held-out test/dev rows: **{routing['accuracy']:.1%}** of the top-1 choices pick the task's expert"
            f" (GSM8K rows {routing['per_task'][0]:.1%}, E2E rows {routing['per_task'][1]:.1%})."
            + (f" The job's own held-out split of the training sets: {job_acc:.1%}." if job_acc is not None else ""),
            "",
            *(
                [
                    f"- **Below the 90 % target on {low} rows**: the routers are under-trained in this run"
                    f" ({mixture['steps']} steps × {args['mixture_batch']} rows on a loaded 2-core CPU) and lean to"
                    " one expert. With top-2 of 2 experts every token still blends both experts (only the weights"
                    " differ), which is why the losses below stay close to the specialists'. More router steps are"
                    " the obvious next run.",
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
                    "linear 0.5 + 0.5",
                    "linear 1 + 1",
                ],
                rows,
            ),
            "",
            "## A composite prompt",
            "",
            "One user message with a GSM8K test question followed by an E2E restaurant request (rows just past"
            " the scored ones):",
            "",
            "```text",
            composite["prompt"],
            "```",
            "",
            "![routing heatmap](mixture_routing.png)",
            "",
            f"Rows: the q_proj and down_proj of every layer (first layer on top; all {composite['modules']}"
            " gated modules are routed), columns: the"
            f" {composite['tokens']} tokens of the chat-formatted prompt; blue = GSM8K expert, orange = E2E"
            f" expert; the black line is the end of the maths part (token {composite['maths_tokens']})."
            f" Over all modules, {composite['maths_part_to_gsm8k']:.0%} of the choices on the maths part go to the"
            f" GSM8K expert and {composite['restaurant_part_to_e2e']:.0%} on the restaurant part (and the chat"
            " template's closing tokens) to the E2E expert. kaleido is not installed, so the PNG is drawn with"
            " Pillow; the studio's interactive plotly figure (the Compose tab's heatmap, same rows) is"
            " `mixture_routing.json` (`plotly.io.read_json`).",
            "",
        ]
    )


if __name__ == "__main__":
    main()
