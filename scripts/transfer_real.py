"""Trans-LoRA on real data: a GSM8K adapter carried to a changed base, against retraining and the ablations.

The source is a LoRA trained on GSM8K on the bundled ``smollm2-135m-instruct`` with the transfer kit
on (the default: 5 seeds and a discriminator kept with the adapter). The target is "the provider
updated the base": SmolLM2 with an unrelated adapter (a short E2E NLG LoRA) folded into its weights
by the studio's merged-model export, used as a local model directory. Every arm is scored on the same
held-out GSM8K test rows by the studio's eval job: response-token loss and exact match of the final
answer (the last number of the reply against the number after ``####``):

- bare target, and the source on its own base (plus the bare source base, for reference);
- transferred with the discriminator filter; transferred unfiltered (``use_filter`` off);
  seeds only (``samples`` 0: the student learns the teacher's answers to the kit's 5 seeds);
- an adapter retrained on the real training rows on the target, with the same steps.

GSM8K, not Alpaca: its answers have one checkable number, so exact match means something. Its
worked answers are long for this CPU (median ~110 tokens, ~200 with the question and the chat
template), so the run keeps the **short-answer rows**: training rows whose whole chat fits
``--max-length`` tokens and whose answer is at most ``--max-answer-tokens``; held-out test rows whose
answer is at most ``--max-answer-tokens`` (their questions may be longer: the eval job does not cut).

Every step goes through the studio: datasets by ``DatasetService``, the merged base by
``AdapterService.export_merged_model``, jobs submitted by ``JobService`` and run here by the studio's
job runner (``run_job_inline``). Each arm's result is written to the JSON as it finishes
(``--resume`` skips what is there) and the page is rewritten after each.

    python scripts/transfer_real.py --quick --out /tmp/t.json --doc /tmp/t.md      # tiny, minutes
    python scripts/transfer_real.py --data /work/shared/data                      # the documented run
    python scripts/transfer_real.py --data /work/shared/data --resume             # go on after a stop
    python scripts/transfer_real.py --render-only                                 # rewrite the page
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    DEFAULT_BASE,
    add_run_arguments,
    data_file,
    markdown_table,
    open_record,
    read_jsonl,
    record_saver,
    start_run,
    write_jsonl,
)
from bench.inline_studio import Studio  # noqa: E402

E2E_PROMPT = "Write one sentence describing this restaurant: {mr}"
DEFAULT_WORK = Path("/tmp/transfer-real-work")
# Arms in the order they run (and are listed): references first, then the transfers, then retraining.
SOURCE_BASE_ARM = "bare source base (SmolLM2)"
SOURCE_ARM = "source adapter on its own base"
TARGET_ARM = "bare target (changed base)"
FILTERED_ARM = "transferred, discriminator filter"
UNFILTERED_ARM = "transferred, unfiltered"
SEEDS_ARM = "transferred, seeds only"
RETRAIN_ARM = "retrained on the real rows, on the target"
ARMS = (SOURCE_BASE_ARM, SOURCE_ARM, TARGET_ARM, FILTERED_ARM, UNFILTERED_ARM, SEEDS_ARM, RETRAIN_ARM)
TRANSFER_ARMS = {FILTERED_ARM: {"use_filter": True}, UNFILTERED_ARM: {"use_filter": False}, SEEDS_ARM: {"samples": 0}}


# --- rows ---------------------------------------------------------------------------------------------------------


def short_gsm8k(
    rows: list[dict[str, Any]],
    count: int,
    lengths: Callable[[str, str], tuple[int, int]],
    max_answer_tokens: int,
    max_length: int | None,
) -> list[dict[str, str]]:
    """The first ``count`` GSM8K rows with a short worked answer, as prompt/completion rows.

    ``lengths(question, answer)`` gives (answer tokens, tokens of the whole chat as trained). A row
    is kept when its answer has at most ``max_answer_tokens`` and (when ``max_length`` is given) the
    whole chat fits ``max_length``, so no training row loses its final ``#### N`` to truncation.
    """
    out = []
    for row in rows:
        answer_tokens, chat_tokens = lengths(row["question"], row["answer"])
        if answer_tokens > max_answer_tokens or (max_length is not None and chat_tokens > max_length):
            continue
        out.append({"prompt": row["question"], "completion": row["answer"]})
        if len(out) == count:
            break
    return out


def e2e_rows(rows: list[dict[str, Any]], count: int) -> list[dict[str, str]]:
    """The first ``count`` E2E NLG rows as prompt/completion (restaurant attributes -> one sentence)."""
    return [{"prompt": E2E_PROMPT.format(mr=r["mr"]), "completion": r["ref"]} for r in rows[:count]]


def token_lengths(base_path: Path) -> Callable[[str, str], tuple[int, int]]:
    """(answer tokens, whole-chat tokens) with the base's tokenizer and chat template, as training encodes a row."""
    from studio.training.models import load_tokenizer_for
    from studio.training.tokenise import ensure_chat_template

    tokenizer = load_tokenizer_for(base_path)
    ensure_chat_template(tokenizer)

    def lengths(question: str, answer: str) -> tuple[int, int]:
        chat = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        whole = tokenizer.apply_chat_template(chat, tokenize=True)
        whole = whole["input_ids"] if isinstance(whole, dict) or hasattr(whole, "keys") else whole
        return len(tokenizer(answer, add_special_tokens=False)["input_ids"]), len(whole)

    return lengths


# --- the run ------------------------------------------------------------------------------------------------------


def hyper(args: argparse.Namespace) -> dict[str, Any]:
    """One training set-up for every LoRA of the comparison (source, students, retrained)."""
    return {
        "max_steps": args.steps,
        "batch_size": 4,
        "max_length": args.max_length,
        "learning_rate": args.lr,
        "validation_fraction": 0.0,
        "save_every": 100_000,
        "eval_every": 100_000,
        "log_every": 4,
    }


def config_of(args: argparse.Namespace) -> dict[str, Any]:
    """What decides the numbers: a JSON made with another config is not resumed."""
    keys = (
        "base", "train_rows", "eval_rows", "steps", "lr", "max_length", "max_answer_tokens", "samples",
        "max_attempts", "e2e_rows", "e2e_steps", "data",
    )  # fmt: skip
    return {k: str(getattr(args, k)) for k in keys}


def score(studio: Studio, dataset_id: int, args: argparse.Namespace, target: dict[str, Any]) -> dict[str, Any]:
    """Held-out response-token loss and exact match of ``target`` (an adapter or a bare base) by the eval job."""
    result = studio.run(
        {
            "kind": "eval",
            "dataset_id": dataset_id,
            "metrics": ["loss", "exact_match"],
            "max_examples": args.eval_rows,
            "max_new_tokens": args.max_answer_tokens + 8,
            **target,
        }
    )
    return {
        "loss": result["metrics"]["eval_loss"],
        "exact_match": result["metrics"]["exact_match"],
        "examples": result["examples"],
        "truncated_answers": result.get("truncated_answers"),
        "eval_seconds": result["seconds"],
        "eval_job_id": result["job_id"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything not yet in ``args.out`` (with ``--resume``), writing the JSON and the page after each arm."""
    record = open_record(args, config_of(args), {"setup": {}, "arms": {}})
    save = record_saver(record, args.out, args.doc, render)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    studio = Studio(work)
    setup = record["setup"]
    source_base = studio.base_path(args.base)

    if "datasets" not in setup:
        lengths = token_lengths(source_base)
        train = short_gsm8k(
            read_jsonl(data_file("gsm8k", "train.jsonl")), args.train_rows, lengths, args.max_answer_tokens,
            args.max_length,
        )  # fmt: skip
        test = short_gsm8k(
            read_jsonl(data_file("gsm8k", "test.jsonl")), args.eval_rows, lengths, args.max_answer_tokens, None
        )
        e2e = e2e_rows(read_jsonl(data_file("e2e_nlg", "train.jsonl")), args.e2e_rows)
        setup["rows"] = {"gsm8k-train": len(train), "gsm8k-test": len(test), "e2e-train": len(e2e)}
        setup["datasets"] = {
            name: studio.dataset(write_jsonl(work / f"{name}.jsonl", rows))
            for name, rows in (("gsm8k-train", train), ("gsm8k-test", test), ("e2e-train", e2e))
        }
        save()
    data = setup["datasets"]

    if "source" not in setup:
        result = studio.run(
            {
                "kind": "train", "name": "source: lora on gsm8k (short answers)", "dataset_id": data["gsm8k-train"],
                "base_model": args.base, "variant": "lora", "hyper": hyper(args), "seed": 42, "transfer_kit": True,
            }
        )  # fmt: skip
        setup["source"] = _keep(result, ("adapter_id", "final_loss", "steps", "seconds", "transfer_kit", "job_id"))
        save()
    if "target" not in setup:
        started = time.perf_counter()
        e2e = studio.run(
            {
                "kind": "train", "name": "e2e lora (the base update)", "dataset_id": data["e2e-train"],
                "base_model": args.base, "variant": "lora", "seed": 7, "transfer_kit": False,
                "hyper": {**hyper(args), "max_steps": args.e2e_steps, "learning_rate": 1e-3},
            }
        )  # fmt: skip
        target_dir = work / f"target-{e2e['adapter_id']}"
        studio.svc.adapters.export_merged_model(e2e["adapter_id"], target_dir)
        setup["target"] = {
            "path": str(target_dir),
            "e2e_adapter_id": e2e["adapter_id"],
            "e2e_final_loss": e2e.get("final_loss"),
            "seconds": time.perf_counter() - started,
        }
        save()
    target = setup["target"]["path"]
    source_id = setup["source"]["adapter_id"]

    arms = record["arms"]
    for arm in ARMS:
        if arm in arms:
            continue
        print(f"== {arm}", flush=True)
        made: dict[str, Any] = {}
        if arm == SOURCE_BASE_ARM:
            scored = score(studio, data["gsm8k-test"], args, {"base_model": args.base})
        elif arm == SOURCE_ARM:
            made = {"trained": setup["rows"]["gsm8k-train"], "seconds": setup["source"]["seconds"]}
            scored = score(studio, data["gsm8k-test"], args, {"adapter_id": source_id})
        elif arm == TARGET_ARM:
            scored = score(studio, data["gsm8k-test"], args, {"base_model": target})
        elif arm in TRANSFER_ARMS:
            options = {
                "samples": args.samples, "max_attempts": args.max_attempts, "generation_batch": 16,
                "max_answer_tokens": args.max_answer_tokens, "hyper": hyper(args), "seed": 0, **TRANSFER_ARMS[arm],
            }  # fmt: skip
            result = studio.run(
                {"kind": "transfer", "adapter_id": source_id, "target_base": target, "name": arm, "options": options}
            )
            made = _keep(result, ("adapter_id", "generated", "kept", "trained", "final_loss", "steps", "seconds"))
            scored = score(studio, data["gsm8k-test"], args, {"adapter_id": result["adapter_id"]})
        else:  # retrained on the target
            result = studio.run(
                {
                    "kind": "train", "name": arm, "dataset_id": data["gsm8k-train"], "base_model": target,
                    "variant": "lora", "hyper": hyper(args), "seed": 42, "transfer_kit": False,
                }
            )  # fmt: skip
            made = {
                **_keep(result, ("adapter_id", "final_loss", "steps", "seconds")),
                "trained": setup["rows"]["gsm8k-train"],
            }
            scored = score(studio, data["gsm8k-test"], args, {"adapter_id": result["adapter_id"]})
        arms[arm] = {**made, **scored}
        save()
    record["finished"] = True
    save()
    return record


def _keep(result: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: result.get(k) for k in keys if k in result}


# --- the page -----------------------------------------------------------------------------------------------------


def gap_closed(arms: dict[str, dict[str, Any]], arm: str, metric: str = "loss") -> float | None:
    """Share of the bare target → retrained gap an arm closes (1 = as good as retraining; None when unknown)."""
    try:
        bare, retrained, value = arms[TARGET_ARM][metric], arms[RETRAIN_ARM][metric], arms[arm][metric]
    except KeyError:
        return None
    if bare == retrained:
        return None
    return (bare - value) / (bare - retrained)


def ablation_holds(losses: list[float], ems: list[float]) -> str:
    """Whether filtered ≥ unfiltered ≥ seeds only held, by loss (lower is better) and exact match (higher)."""
    by_loss = losses[0] <= losses[1] <= losses[2]
    by_em = ems[0] >= ems[1] >= ems[2]
    em_flat = ems[0] == ems[1] == ems[2]
    if by_loss and em_flat:
        return f"held on loss; exact match did not separate them (all {ems[0]:.0%})"
    if by_loss and by_em:
        return "held"
    if by_loss:
        return "held on loss only"
    if by_em and not em_flat:
        return "held on exact match only"
    return "did not hold"


def verdict(arms: dict[str, dict[str, Any]]) -> list[str]:
    """Plain sentences: did filtered ≥ unfiltered ≥ seeds only hold, and how close did the transfer come to retraining."""
    lines = []
    ablation = [FILTERED_ARM, UNFILTERED_ARM, SEEDS_ARM]
    if all(a in arms for a in ablation):
        losses = [arms[a]["loss"] for a in ablation]
        ems = [arms[a]["exact_match"] for a in ablation]
        held = ablation_holds(losses, ems)
        lines.append(
            f"**Filtered ≥ unfiltered ≥ seeds only (the paper's ablation), here: {held}.** Held-out loss"
            f" {losses[0]:.3f} / {losses[1]:.3f} / {losses[2]:.3f}, exact match"
            f" {ems[0]:.0%} / {ems[1]:.0%} / {ems[2]:.0%} (filtered / unfiltered / seeds only)."
        )
    if FILTERED_ARM in arms and RETRAIN_ARM in arms and TARGET_ARM in arms:
        share = gap_closed(arms, FILTERED_ARM)
        closed = f"{share:.0%}" if share is not None else "n/a"
        close = share is not None and share >= 0.8
        lines.append(
            f"**Transfer close to retraining (at least 80 % of the gap closed), here: {'yes' if close else 'no'}.**"
            " The filtered transfer closes"
            f" {closed} of the loss gap between the bare target ({arms[TARGET_ARM]['loss']:.3f}) and the adapter"
            f" retrained on the real rows ({arms[RETRAIN_ARM]['loss']:.3f}); exact match"
            f" {arms[FILTERED_ARM]['exact_match']:.0%} against {arms[RETRAIN_ARM]['exact_match']:.0%} retrained"
            f" and {arms[TARGET_ARM]['exact_match']:.0%} bare."
        )
    if lines:
        lines.append(
            "One seed, a few dozen held-out rows and a short training run: differences of a few hundredths of"
            " loss or one or two answers are within noise, so read the ordering as indicative, not as settled."
        )
    return lines


def render(record: dict[str, Any]) -> str:
    """The page (docs/results/transfer.md) from the run's JSON; marks a partial run as such."""
    config, setup, arms = record["config"], record.get("setup", {}), record.get("arms", {})
    machine = record.get("machine", {})
    rows_n = setup.get("rows", {})
    missing = [a for a in ARMS if a not in arms]
    table = []
    for arm in ARMS:
        if arm not in arms:
            table.append([arm, "not run", "", "", "", "", "", "", ""])
            continue
        a = arms[arm]
        share = gap_closed(arms, arm) if arm not in (TARGET_ARM, RETRAIN_ARM) else None
        table.append(
            [
                arm,
                f"{a['loss']:.3f}",
                f"{a['exact_match']:.0%}",
                _cut(a),
                f"{share:.0%}" if share is not None else "",
                _count(a.get("generated")),
                _count(a.get("kept")),
                _count(a.get("trained")),
                f"{a['seconds'] / 60:.1f} + {a['eval_seconds'] / 60:.1f}" if a.get("seconds") else
                f"– + {a['eval_seconds'] / 60:.1f}",
            ]
        )  # fmt: skip
    kit = setup.get("source", {}).get("transfer_kit") or {}
    load = f"load average {_load(record.get('load_start'))} at the start, {_load(record.get('load_end'))} at the end"
    lines = [
        "# Trans-LoRA on real data: a GSM8K adapter carried to a changed base",
        "",
        *(
            [
                f"**Partial run**: the run was stopped before these arms were measured: {'; '.join(missing)}.",
                "",
            ]
            if missing
            else []
        ),
        "Generated by `scripts/transfer_real.py`; raw numbers in `bench/results/transfer_real.json`"
        " (rebuild this page with `python scripts/transfer_real.py --render-only`).",
        "",
        "## Set-up",
        "",
        f"- Source: a LoRA (r 8, alpha 16, all attention + MLP linears) on `{config['base']}` trained on"
        f" {rows_n.get('gsm8k-train', '?')} GSM8K training rows, {config['steps']} steps × batch 4, lr"
        f" {float(config['lr']):g}, max_length {config['max_length']}, seed 42, with the transfer kit on (5 seeds"
        f" and a discriminator LoRA; its accuracy on its own training inputs"
        f" {_pct(kit.get('discriminator_train_accuracy'))}, {kit.get('positives', '?')} real and"
        f" {kit.get('negatives', '?')} generated inputs).",
        f"- GSM8K, **short-answer rows** (not Alpaca, because GSM8K has a checkable final answer): worked answers"
        f" are ~110 tokens at the median, ~200 with the question and SmolLM2's chat template, too long for"
        f" this CPU. Training rows: the first whose whole chat fits {config['max_length']} tokens and whose"
        f" answer has at most {config['max_answer_tokens']} tokens; held-out rows: the first"
        f" {rows_n.get('gsm8k-test', '?')} of `gsm8k/test.jsonl` whose answer has at most"
        f" {config['max_answer_tokens']} tokens. So this is the easier, shorter end of GSM8K.",
        f'- Target, "the provider updated the base": SmolLM2 with a LoRA trained {config["e2e_steps"]} steps on'
        f" {rows_n.get('e2e-train', '?')} E2E NLG rows (restaurant attributes → one sentence) folded into its"
        " weights by the studio's merged-model export (`AdapterService.export_merged_model`), used as a local"
        " model directory.",
        f"- Transfers by the `transfer` job: the target writes inputs few-shot from the kit's seeds, up to"
        f" {config['samples']} kept of at most {config['max_attempts']} written, the source answers them greedily"
        f" (at most {config['max_answer_tokens']} tokens), the student LoRA trains with the source's set-up"
        " (same steps, batch, lr, max_length). *Unfiltered*: `use_filter` off (the first inputs written are"
        " kept). *Seeds only*: `samples` 0, the student learns the source's answers to the kit's 5 seeds."
        " *Retrained*: a train job on the target with the real training rows and the same steps.",
        f"- Scores by the `eval` job on the {rows_n.get('gsm8k-test', '?')} held-out rows: mean response-token"
        f" loss (lower is better) and exact match of the final answer (greedy, at most"
        f" {int(config['max_answer_tokens']) + 8} new tokens; the reply's last number against the number after"
        " `####`; *answers cut off*: replies that hit that budget before ending, so their final number is"
        " likely missing). *Gap closed*: share of the loss gap between the bare target and the retrained adapter that"
        " an arm closes (100 % = as good as retraining).",
        "- Every step ran through `JobService.submit` and the studio's job runner in this process"
        " (`run_job_inline`), on an embedded registry.",
        f"- Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores,"
        f" {machine.get('torch_threads', '?')} torch thread(s), torch"
        f" {machine.get('versions', {}).get('torch', '?')}; wall time {record.get('elapsed_s', 0) / 60:.1f} min;"
        f" {load}. Command: `{record.get('command', '')}`.",
        "",
        "## Results",
        "",
        markdown_table(
            [
                "model",
                "held-out loss",
                "exact match",
                "answers cut off",
                "gap closed",
                "generated",
                "kept",
                "trained",
                "train + eval min",
            ],
            table,
        ),  # fmt: skip
        "",
        f"The source's set-up took {setup.get('source', {}).get('seconds', 0) / 60:.1f} min (training and the"
        f" kit); the changed base {setup.get('target', {}).get('seconds', 0) / 60:.1f} min (E2E LoRA and the"
        " merged export). *Generated / kept / trained*: inputs the target wrote, kept by the discriminator (all"
        " when unfiltered; the seeds for seeds only), answered and trained on (an empty answer is dropped).",
        "",
        *[line + "\n" for line in verdict(arms)],
    ]
    return "\n".join(lines).rstrip() + "\n"


def _cut(arm: dict[str, Any]) -> str:
    """'8 / 24': answers that hit the generation budget before ending (their exact match is likely 0)."""
    if arm.get("truncated_answers") is None:
        return ""
    return f"{arm['truncated_answers']} / {arm.get('examples', '?')}"


def _count(value: Any) -> str:
    return "" if value is None else str(value)


def _pct(value: Any) -> str:
    return "?" if value is None else f"{float(value):.0%}"


def _load(values: Any) -> str:
    return f"{values[0]:.1f}" if values else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(
        parser,
        out="transfer_real.json",
        doc="transfer.md",
        resume="Skip the set-up and arms already in --out.",
        quick="Tiny scale: a check of the whole path in minutes.",
    )
    parser.add_argument("--base", default=DEFAULT_BASE)
    parser.add_argument("--train-rows", type=int, default=32, help="GSM8K short-answer training rows.")
    parser.add_argument("--eval-rows", type=int, default=24, help="Held-out GSM8K test rows (short answers).")
    parser.add_argument("--steps", type=int, default=12, help="Steps of every LoRA trained (batch 4).")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-answer-tokens", type=int, default=64)
    parser.add_argument("--samples", type=int, default=24, help="Synthetic inputs a transfer keeps.")
    parser.add_argument("--max-attempts", type=int, default=48, help="Inputs a transfer writes at most.")
    parser.add_argument("--e2e-rows", type=int, default=32)
    parser.add_argument("--e2e-steps", type=int, default=8, help="Steps of the E2E LoRA folded into the target.")
    parser.add_argument("--work", default=str(DEFAULT_WORK), help="The embedded studio (kept for --resume).")
    parser.add_argument("--render-only", action="store_true", help="Rewrite --doc from --out; no runs.")
    args = parser.parse_args(argv)
    if args.render_only:
        Path(args.doc).write_text(render(json.loads(Path(args.out).read_text())), encoding="utf-8")
        print(f"wrote {args.doc} from {args.out}")
        return 0
    if args.quick:
        args.train_rows, args.eval_rows, args.steps, args.samples, args.max_attempts = 8, 4, 2, 4, 16
        args.e2e_rows, args.e2e_steps, args.max_answer_tokens = 8, 2, 48
    start_run(args)
    run(args)
    print(f"wrote {args.out} and {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
