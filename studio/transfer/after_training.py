"""The transfer kit a train job keeps with its adapter (``TrainRequest.transfer_kit``).

A last stage of the train job, after the adapter is saved: the kit needs the training rows,
which may be deleted later. It never fails the job: a kit that cannot be made is a warning in
the log and in the job's result, and the adapter is registered without one.

Its cost follows the data: as many real inputs as rows (at most 64), as many generated ones,
and a discriminator trained 3 epochs over both, so a 12-row test set costs a few steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.progress import Reporter
from studio.schema import KitOptions, TrainRequest
from studio.transfer.reporting import StageReporter

STAGE = "building the transfer kit"  # the job's progress text while it runs: past the last step, not stuck
MAX_POSITIVES = 64


@dataclass(frozen=True)
class KitPlan:
    """What building the kit will do, counted before training: the time estimate prices it."""

    inputs: int  # real inputs kept, and as many inputs the base writes
    prompt_tokens: int  # the few-shot prompt each written input follows
    max_new_tokens: int  # the longest written input
    batch: int  # inputs the engine writes together
    discriminator: TrainRequest  # its training run, as train_chat_lora makes it
    discriminator_lengths: tuple[int, ...]  # tokens of each discriminator row (written inputs: like the real ones)


def kit_options_for(request: TrainRequest, rows: int, longest_input_chars: int = 256) -> KitOptions:
    """Kit settings scaled to the dataset: few negatives and few discriminator steps on tiny data.

    Generated inputs are cut at about twice the longest real input (half a token per
    character, at least 16 and at most the default 64 tokens): a base that does not stop
    at the line break would otherwise write 64 tokens of every negative.
    """
    defaults = KitOptions()
    hyper = defaults.hyper.model_copy(
        update={"max_length": min(defaults.hyper.max_length, request.hyper.max_length), "log_every": 1}
    )
    max_tokens = min(defaults.max_input_tokens, max(16, longest_input_chars // 2))
    return defaults.model_copy(
        update={
            "positives": max(2, min(MAX_POSITIVES, rows)),
            "max_input_tokens": max_tokens,
            "seed": request.seed,
            "hyper": hyper,
        }
    )


def kit_plan(
    request: TrainRequest, task: str, rows: Sequence[dict[str, Any]], base_path: str | Path, tokenizer: Any
) -> KitPlan | None:
    """What :func:`keep_transfer_kit` will do with ``rows`` (None: no kit), counted as it and the kit count it."""
    if not request.transfer_kit or task != "causal-lm":
        return None
    from studio.training.tokenise import encode_rows
    from studio.transfer import discriminator as disc
    from studio.transfer.synth import ENGINE_BATCH, fewshot_prompt, pick, row_example
    from studio.transfer.train import chat_lora_request

    examples = [e for e in map(row_example, rows) if e is not None]
    if len(examples) < 2:
        return None
    options = kit_options_for(request, len(examples), max(len(e["input"]) for e in examples))
    seeds = [e["input"] for e in pick(examples, options.seeds, options.seed)]
    positives = [e["input"] for e in pick(examples, options.positives, options.seed + 1)]
    prompt = tokenizer(fewshot_prompt(seeds, options.fewshot), add_special_tokens=True)["input_ids"]
    # the written inputs are not known yet: priced as the real ones (both are cut near the longest real input)
    disc_rows = disc.training_rows(positives, positives, options.question)
    encoded = encode_rows(disc_rows, tokenizer, task="causal-lm", max_length=options.hyper.max_length)
    discriminator = chat_lora_request(
        options.discriminator_base or base_path,
        hyper=options.hyper,
        variant_params={"r": options.discriminator_r, "lora_alpha": 2.0 * options.discriminator_r},
        seed=options.seed,
    )
    return KitPlan(
        inputs=len(positives),
        prompt_tokens=len(prompt),
        max_new_tokens=options.max_input_tokens,
        batch=ENGINE_BATCH,
        discriminator=discriminator,
        discriminator_lengths=tuple(len(e["input_ids"]) for e in encoded.examples),
    )


def keep_transfer_kit(
    request: TrainRequest,
    task: str,
    dataset_path: str | Path,
    adapter_dir: str | Path,
    base_path: str | Path,
    reporter: Reporter,
    ctx: Any,
    job_step: int,
) -> dict[str, Any] | None:
    """Build ``<adapter_dir>/transfer_kit/`` when the request asks for it; returns what the job result records.

    None: no kit was asked for or possible (classification, no chat rows), with a log line why.
    ``{"error": ...}``: building it failed (logged as a warning; the job goes on).
    """
    if not request.transfer_kit:
        return None
    if task != "causal-lm":
        reporter.log(f"no transfer kit: only text-generation adapters can be transferred (this one is {task})")
        return None
    from studio.errors import JobCancelled
    from studio.training.data import read_jsonl
    from studio.transfer.kit import build_transfer_kit
    from studio.transfer.synth import row_example

    rows = read_jsonl(dataset_path)
    examples = [e for e in map(row_example, rows) if e is not None]
    chat = len(examples)
    if chat < 2:
        reporter.log("no transfer kit: the dataset has no chat rows (a user turn and its answer) to keep as seeds")
        return None
    options = kit_options_for(request, chat, max(len(e["input"]) for e in examples))
    reporter.progress(job_step, job_step, f"{STAGE}: writing {min(chat, options.positives)} inputs with the base")
    stage = StageReporter(
        reporter,
        lambda step, total: f"{STAGE}: discriminator step {step}/{total or '?'}",
        progress=lambda step, total: (job_step, job_step),  # training is done: the bar stays full
    )
    try:
        kit = build_transfer_kit(
            adapter_dir,
            base_path,
            rows,
            options=options,
            device=ctx.device,
            work_dir=Path(ctx.work_dir) / "transfer-kit",
            settings=ctx.settings,
            reporter=stage,
            log=lambda message: reporter.log(message),
        )
    except JobCancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the kit leaves a good adapter without one
        message = f"the adapter was saved without a transfer kit: {exc}"
        reporter.log(message, "warning")
        return {"error": message}
    reporter.progress(job_step, job_step, "transfer kit built")
    meta = kit.meta
    return {
        "path": str(kit.path),
        "seeds": meta["seeds"],
        "positives": meta["positives"],
        "negatives": meta["negatives"],
        "discriminator_train_accuracy": meta["discriminator_train_accuracy"],
    }
