"""The transfer: source base + adapter + kit, target base in; a PEFT LoRA for the target base out.

Stage 1 of Trans-LoRA (composition spec §5): the target base writes task inputs few-shot
from the kit's seeds (sampled); the kit's discriminator keeps those with P(real) above the
threshold until ``samples`` are kept or ``max_attempts`` were written; the source base with
its adapter answers them greedily; a LoRA is trained on the target base on those answers
(prompt masked). With ``samples`` 0 the student learns the teacher's answers to the seeds alone
(the paper's seeds-only ablation). The token-level KL the spec mentions for shared tokenizers is not done.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from studio.errors import ValidationFailed
from studio.progress import Reporter
from studio.transfer import discriminator as disc
from studio.transfer.kit import TransferKit, load_transfer_kit
from studio.transfer.options import TransferOptions
from studio.transfer.synth import answer, chat_row, open_engine, write_inputs
from studio.transfer.train import train_chat_lora

LINEAGE_FILE = "transfer.json"


@dataclass
class TransferCounts:
    """What a transfer has done so far: inputs written, kept by the discriminator, trained on."""

    stage: str = "generating"  # generating -> answering -> training -> done
    generated: int = 0
    kept: int = 0
    trained: int = 0


@dataclass
class TransferResult:
    adapter_dir: Path
    counts: TransferCounts
    final_loss: float | None = None
    steps: int = 0
    examples: list[dict[str, str]] = field(default_factory=list)  # the synthetic {"input", "output"} trained on


def _source_rank(adapter_dir: Path) -> tuple[int | None, float | None]:
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.exists():
        return None, None
    config = json.loads(config_file.read_text())
    return config.get("r"), config.get("lora_alpha")


def transfer(
    source_base: str | Path,
    source_adapter: str | Path,
    kit: TransferKit | str | Path,
    target_base: str | Path,
    out_dir: str | Path,
    *,
    options: TransferOptions | None = None,
    device: Any,
    work_dir: str | Path,
    settings: Any = None,
    reporter: Reporter | None = None,
    on_progress: Callable[[TransferCounts], None] | None = None,
) -> TransferResult:
    """Transfer ``source_adapter`` (on ``source_base``) to ``target_base``; the new LoRA goes to ``out_dir``.

    ``on_progress`` gets the counts after every generation round and each stage change.
    Raises ValidationFailed when the discriminator keeps nothing within ``max_attempts``.
    """
    options = options or TransferOptions()
    kit = kit if isinstance(kit, TransferKit) else load_transfer_kit(kit)
    source_adapter = Path(source_adapter)
    counts = TransferCounts()
    say = reporter.log if reporter is not None else (lambda message, level="info": None)

    def tell() -> None:
        if on_progress is not None:
            on_progress(TransferCounts(**asdict(counts)))

    # samples = 0: no synthetic inputs, the student learns the teacher's answers to the kit's seeds alone
    # (the paper's seeds-only ablation), so neither the target's writer nor the discriminator is loaded.
    seeds_only = options.samples == 0
    source = open_engine(source_base, device, slots=2)
    if not seeds_only:
        # One engine per base: the discriminator shares the source's when both sit on the same base.
        target = open_engine(target_base, device, slots=1, max_batch=options.generation_batch)
        same_base = Path(kit.discriminator_base).resolve() == Path(source_base).resolve()
        judge = source if same_base else open_engine(kit.discriminator_base, device, slots=1)

    kept: list[str] = list(kit.seed_inputs) if seeds_only else []
    counts.kept = len(kept)
    tell()
    round_no = 0
    while len(kept) < options.samples and counts.generated < options.max_attempts:
        if reporter is not None:
            reporter.check_cancelled()
        size = min(options.generation_batch, options.max_attempts - counts.generated)
        written = write_inputs(
            target,
            kit.seed_inputs,
            kit.fewshot,
            size,
            temperature=options.temperature,
            top_p=options.top_p,
            max_tokens=options.max_input_tokens,
            seed=options.seed * 1_009 + round_no,
        )
        round_no += 1
        counts.generated += size
        candidates = [text for text in written if text]
        if options.use_filter and candidates:
            scores = disc.p_real(judge, kit.discriminator_dir, candidates, kit.question)
            chosen = disc.keep_real(scores, options.threshold, options.samples - len(kept))
        else:
            chosen = list(range(min(len(candidates), options.samples - len(kept))))
        kept.extend(candidates[i] for i in chosen)
        counts.kept = len(kept)
        tell()
    if seeds_only:
        say(f"transfer: seeds only, the teacher answers the kit's {counts.kept} seed inputs")
    else:
        say(f"transfer: the target wrote {counts.generated} inputs, {counts.kept} kept")
        del target
        if not same_base:
            del judge
    if not kept:
        raise ValidationFailed(
            f"the discriminator kept none of the {counts.generated} inputs the target wrote; "
            "raise max_attempts, lower the threshold or check the few-shot format"
        )

    counts.stage = "answering"
    tell()
    replies = answer(source, source_adapter, kept, options.max_answer_tokens)
    del source
    examples = [{"input": x, "output": y} for x, y in zip(kept, replies, strict=True) if y]
    if not examples:
        raise ValidationFailed("the source adapter answered none of the kept inputs")

    counts.stage, counts.trained = "training", len(examples)
    tell()
    r, alpha = _source_rank(source_adapter)
    params: dict[str, Any] = {"r": options.r or r or 8, "lora_alpha": options.lora_alpha or alpha or 16.0}
    if options.target_modules:
        params["target_modules"] = list(options.target_modules)
    out = Path(out_dir)
    trained = train_chat_lora(
        [chat_row(e["input"], e["output"]) for e in examples],
        target_base,
        out,
        hyper=options.hyper,
        variant_params=params,
        seed=options.seed,
        device=device,
        work_dir=Path(work_dir) / "student",
        settings=settings,
        reporter=reporter,
    )
    counts.stage = "done"
    lineage = {
        "method": "trans-lora",
        "source_base": str(source_base),
        "source_adapter": str(source_adapter),
        "kit": str(kit.path),
        "target_base": str(target_base),
        "counts": asdict(counts),
        "final_loss": trained["final_loss"],
        "steps": trained["steps"],
        "options": options.model_dump(mode="json"),
    }
    (out / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2))
    with open(out / "synthetic.jsonl", "w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example) + "\n")
    tell()
    return TransferResult(out, counts, trained["final_loss"], trained["steps"], examples)
