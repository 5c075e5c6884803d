"""LoRA on real data: SmolLM2-135M-Instruct on Alpaca, validation loss over training and before/after samples.

Issue "training jobs" item 10. The run goes through the studio's training engine
(``studio.training.loop.run_training``; no queue, to keep it cheap) on rows of
``shared/data/alpaca/train.jsonl`` converted to the studio's canonical chat rows (what
``DatasetService.add`` stores for Alpaca). Validation is on HELD-OUT rows of
``alpaca/test.jsonl``: the loss on their response tokens, computed with the studio's own
``studio.training.losses.evaluate``, before the first step and every ``--eval-every``
steps (the engine reports each step through the reporter; this script's reporter runs
the evaluation at those steps on the model being trained). Greedy answers to three fixed
test prompts are generated with ``studio.evaluation.generate.generate_answers`` before the
first step (the freshly wrapped model: LoRA's B = 0, so exactly the base model) and after
the last.

    python scripts/real_data_lora.py                    # the documented run (see docs/results/real_data_lora.md)
    python scripts/real_data_lora.py --steps 20 --eval-every 5 --doc /tmp/x.md --out /tmp/x.json   # a quick look

Writes docs/results/real_data_lora.md and bench/results/real_data_lora.json.
"""

from __future__ import annotations

import argparse
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
    start_run,
    worker_device,
    write_json,
    write_jsonl,
)

PROMPT_ROWS = (0, 16, 30)  # alpaca/test.jsonl rows with short, checkable answers


class EvalReporter(TimingReporter):
    """Runs a validation pass (and keeps the curve) every ``eval_every`` steps, on the model being trained."""

    def __init__(self, eval_every: int, evaluate_fn: Any, echo: bool = True):
        super().__init__(echo=False)
        self.eval_every = eval_every
        self.evaluate_fn = evaluate_fn
        self.model: Any = None
        self.curve: list[dict[str, float]] = []
        self.print_steps = echo

    def progress(self, step: int, total: int | None = None, message: str | None = None) -> None:
        super().progress(step, total, message)
        if self.model is not None and (step % self.eval_every == 0 or step == total):
            started = time.perf_counter()
            loss = self.evaluate_fn(self.model)
            train = [value for s, name, value in self.metric_rows if name == "loss"]
            self.curve.append({"step": step, "val_loss": loss, "train_loss_window": train[-1] if train else None})
            if self.print_steps:
                print(f"step {step}/{total}: val_loss {loss:.4f} ({time.perf_counter() - started:.1f} s)", flush=True)


def run(
    *,
    base_path: str | Path,
    train_rows: list[dict[str, Any]],
    val_rows: list[dict[str, Any]],
    prompts: list[list[dict[str, str]]],
    steps: int,
    batch_size: int,
    max_length: int,
    eval_every: int,
    learning_rate: float = 2e-4,
    seed: int = 42,
    max_new_tokens: int = 64,
    base_model: str = DEFAULT_BASE,
    variant: str = "lora",
    precision: str = "auto",
    echo: bool = True,
) -> dict[str, Any]:
    """Train on canonical ``train_rows``; evaluate on canonical ``val_rows``; sample ``prompts`` before and after."""
    import torch

    import studio.training.loop as loop
    from studio.evaluation.generate import generate_answers
    from studio.schema import TrainingHyperParams, TrainRequest
    from studio.training.data import eval_batches
    from studio.training.losses import evaluate
    from studio.training.models import load_tokenizer_for
    from studio.training.setup import TrainingData
    from studio.training.tokenise import encode_rows

    tokenizer = load_tokenizer_for(base_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    val = encode_rows(val_rows, tokenizer, task="causal-lm", max_length=max_length).examples
    val_batches = list(eval_batches(val, batch_size, pad_id))
    variant_box: dict[str, Any] = {}

    def val_loss(model: Any) -> float:
        return evaluate(model, val_batches, "causal-lm", variant_box.get("variant")).loss

    def samples(model: Any) -> list[str]:
        was_training = model.training
        model.eval()
        try:
            return generate_answers(
                model, tokenizer, prompts, max_new_tokens=max_new_tokens, max_prompt_tokens=max_length, device="cpu"
            )
        finally:
            model.train(was_training)

    reporter = EvalReporter(eval_every, val_loss, echo=echo)
    before: dict[str, Any] = {}
    original_create = loop.create_variant

    def create(*a: Any, **k: Any) -> Any:
        variant = original_create(*a, **k)
        variant_box["variant"] = variant
        build = variant.build

        def build_and_look(ctx: Any) -> Any:
            model = build(ctx)
            # Before the first step: LoRA's B is zero, so this is exactly the base model.
            started = time.perf_counter()
            rng = torch.get_rng_state()  # neither pass draws random numbers; keep the run's RNG exactly as without them
            before["val_loss"] = val_loss(model)
            before["samples"] = samples(model)
            before["seconds"] = time.perf_counter() - started
            reporter.curve.append({"step": 0, "val_loss": before["val_loss"], "train_loss_window": None})
            if echo:
                print(f"step 0: val_loss {before['val_loss']:.4f}", flush=True)
            torch.set_rng_state(rng)
            reporter.model = model
            return model

        variant.build = build_and_look
        return variant

    request = TrainRequest(
        dataset_id=1,
        base_model=base_model,
        variant=variant,
        seed=seed,
        hyper=TrainingHyperParams(
            max_steps=steps,
            batch_size=batch_size,
            max_length=max_length,
            learning_rate=learning_rate,
            validation_fraction=0.0,  # validation is on alpaca/test rows instead (above)
            log_every=max(1, min(10, eval_every)),
            eval_every=100_000,
            save_every=100_000,
            precision=precision,
        ),
    )
    loop.create_variant = create
    try:
        with tempfile.TemporaryDirectory(prefix="real-data-lora-") as tmp:
            data = TrainingData(path=write_jsonl(Path(tmp) / "train.jsonl", train_rows), name="alpaca-train")
            started = time.perf_counter()
            result = loop.run_training(
                request,
                reporter,
                settings=None,
                device=worker_device(),
                work_dir=Path(tmp) / "work",
                dataset=data,
                base_path=Path(base_path),
            )
            wall = time.perf_counter() - started
    finally:
        loop.create_variant = original_create
    after = samples(result.model)
    tps = [value for _, name, value in reporter.metric_rows if name == "tokens_per_s"]
    describe = getattr(result, "training_setup", None)
    training_setup = describe(request.hyper) if describe else {}
    return {
        "request": request.model_dump(mode="json"),
        "training_setup": training_setup,
        "trainable_params": result.trainable_params,
        "truncated_rows": result.truncated,
        "train_examples": len(train_rows),
        "val_examples": len(val),
        "curve": reporter.curve,
        "train_loss_by_step": [result.losses[k] for k in sorted(result.losses)],
        "samples_before": before["samples"],
        "samples_after": after,
        "wall_seconds": wall,
        "mean_tokens_per_s": sum(tps) / len(tps) if tps else None,
        "peak_rss_mb": peak_rss_mb(),
    }


def write_markdown(path: Path, res: dict[str, Any], cfg: dict[str, Any], machine: dict[str, Any]) -> None:
    hyper = res["request"]["hyper"]
    curve = res["curve"]
    first, last = curve[0]["val_loss"], curve[-1]["val_loss"]
    best = min(c["val_loss"] for c in curve)
    sample_rows = [
        [
            f"`{p['messages'][0]['content'][:90]}`".replace("\n", " "),
            b.replace("\n", " ").replace("|", "\\|"),
            a.replace("\n", " ").replace("|", "\\|"),
            p["messages"][1]["content"].replace("\n", " ").replace("|", "\\|"),
        ]
        for p, b, a in zip(cfg["prompt_rows"], res["samples_before"], res["samples_after"], strict=True)
    ]
    lines = [
        "# LoRA on real data: SmolLM2-135M-Instruct on Alpaca (CPU)",
        "",
        "Generated by `scripts/real_data_lora.py`; raw numbers in `bench/results/real_data_lora.json`.",
        "",
        "## Set-up",
        "",
        f"- Model: `{cfg['base_model']}` (the bundled GGUF, de-quantised to fp32 weights), LoRA r={res['request']['variant_params'].get('r', 8)} "
        f"(studio defaults: r 8, alpha 16, dropout 0.05, all attention + MLP linears), {res['trainable_params']:,} trainable parameters.",
        f"- Training data: {res['train_examples']} rows of `shared/data/alpaca/train.jsonl` (file order, rows whose "
        f"instruction+input+output is at most {cfg['max_chars']} characters), as canonical chat rows; loss on the "
        f"response tokens only; {res['truncated_rows']} rows truncated at max_length.",
        f"- Validation: {res['val_examples']} held-out rows of `shared/data/alpaca/test.jsonl` (the first "
        f"{cfg['val_rows']}), mean response-token cross-entropy, every {cfg['eval_every']} steps and before step 1.",
        f"- Optimisation: {hyper['max_steps']} steps × batch {hyper['batch_size']}, max_length {hyper['max_length']}, "
        f"AdamW lr {hyper['learning_rate']} (warmup {hyper['warmup_ratio']:.0%}, linear decay), grad clip "
        f"{hyper['max_grad_norm']}, seed {res['request']['seed']}; compute: {_compute(res)}.",
        f"- Engine: `studio.training.loop.run_training` directly (no queue). Wall time {res['wall_seconds'] / 60:.1f} min "
        f"including validation passes; mean training rate {res['mean_tokens_per_s']:.0f} tokens/s; peak RSS "
        f"{res['peak_rss_mb']:.0f} MiB.",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores shared with other work (1-min loadavg at start "
        f"{cfg['loadavg_start']}, at end {machine['loadavg_1_5_15']}); {cfg.get('threads')} intra-op thread(s); "
        f"torch {machine['versions']['torch']}, "
        f"transformers {machine['versions']['transformers']}, peft {machine['versions']['peft']}.",
        f"- Command: `{cfg['command']}`",
        "",
        "## Validation loss",
        "",
        f"From {first:.4f} before training to {last:.4f} after step {curve[-1]['step']} "
        f"({(last - first) / first:+.1%}; best {best:.4f}).",
        "",
        markdown_table(
            ["step", "val loss (alpaca/test)", "train loss (last log window)"],
            [
                [
                    c["step"],
                    round(c["val_loss"], 4),
                    None if c["train_loss_window"] is None else round(c["train_loss_window"], 4),
                ]
                for c in curve
            ],
        ),
        "",
        "## Greedy samples (max 64 new tokens), before and after",
        "",
        markdown_table(["prompt (alpaca/test)", "before (base)", "after (LoRA)", "reference"], sample_rows),
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


def _compute(res: dict[str, Any]) -> str:
    setup = res.get("training_setup") or {}
    precision = (setup.get("precision") or {}).get("precision", "fp32")
    parts = [f"{precision} (weights fp32)" if precision != "fp32" else "fp32"]
    if setup.get("loss"):
        parts.append(f"loss {setup['loss']}")
    if setup.get("group_by_length"):
        parts.append("length-grouped batches")
    if setup.get("gradient_checkpointing"):
        parts.append("gradient checkpointing")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--train-rows", type=int, default=800)
    parser.add_argument("--max-chars", type=int, default=400, help="Keep training rows at most this long (characters).")
    parser.add_argument("--val-rows", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="The request's compute precision (auto = the studio's choice for this device).",
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--base-model", default=DEFAULT_BASE)
    add_run_arguments(parser, out="real_data_lora.json", doc="real_data_lora.md")
    args = parser.parse_args(argv)
    start_run(args)
    load_start = loadavg()
    base_path = resolve_base(args.base_model)
    train = [alpaca_canonical(r) for r in alpaca_rows("train", args.train_rows, max_chars=args.max_chars)]
    test = alpaca_rows("test")
    val = [alpaca_canonical(r) for r in test[: args.val_rows]]
    prompt_rows = [alpaca_canonical(test[i]) for i in PROMPT_ROWS]
    prompts = [[p["messages"][0]] for p in prompt_rows]
    res = run(
        base_path=base_path,
        train_rows=train,
        val_rows=val,
        prompts=prompts,
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        eval_every=args.eval_every,
        learning_rate=args.learning_rate,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        base_model=args.base_model,
        precision=args.precision,
    )
    cfg = {
        "base_model": args.base_model,
        "max_chars": args.max_chars,
        "val_rows": args.val_rows,
        "eval_every": args.eval_every,
        "prompt_test_rows": list(PROMPT_ROWS),
        "threads": args.threads,
        "prompt_rows": prompt_rows,
        "loadavg_start": load_start,
        "command": "python scripts/real_data_lora.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    machine = machine_info()
    write_json(args.out, {"script": "real_data_lora", "config": cfg, "result": res, "machine": machine})
    write_markdown(Path(args.doc), res, cfg, machine)
    for p, b, a in zip(prompts, res["samples_before"], res["samples_after"], strict=True):
        print(f"PROMPT {p[0]['content']!r}\n  before: {b!r}\n  after:  {a!r}")
    print(f"wrote {args.out} and {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
