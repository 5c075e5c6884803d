"""The transfer kit: what a causal-LM adapter keeps so that it can be transferred after its data is gone.

Layout, next to the adapter (``<adapter>/transfer_kit/``)::

    seeds.jsonl        the seed examples, one {"input", "output"} per line
    discriminator/     a PEFT LoRA on the discriminator base: "yes" = real task input, "no" = generated
    kit.json           how the kit was made (bases, prompt format, question, counts, the
                       discriminator's accuracy on its own training inputs)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import ValidationFailed
from studio.progress import Reporter
from studio.transfer import discriminator as disc
from studio.transfer.options import FewShotFormat, KitOptions
from studio.transfer.synth import open_engine, pick, task_examples, write_inputs
from studio.transfer.train import train_chat_lora

KIT_DIR = "transfer_kit"
KIT_FILE = "kit.json"
SEEDS_FILE = "seeds.jsonl"
DISCRIMINATOR_DIR = "discriminator"
KIT_VERSION = 1


@dataclass
class TransferKit:
    """A kit read back from disk."""

    path: Path
    seeds: list[dict[str, str]]
    discriminator_dir: Path
    discriminator_base: Path
    source_base: str
    question: str
    fewshot: FewShotFormat
    meta: dict[str, Any]

    @property
    def seed_inputs(self) -> list[str]:
        return [s["input"] for s in self.seeds]


def kit_dir_for(adapter_dir: str | Path) -> Path:
    """Where an adapter's kit lives."""
    return Path(adapter_dir) / KIT_DIR


def build_transfer_kit(
    adapter_dir: str | Path,
    source_base: str | Path,
    rows: Sequence[dict[str, Any]],
    *,
    options: KitOptions | None = None,
    device: Any,
    work_dir: str | Path,
    settings: Any = None,
    reporter: Reporter | None = None,
    log: Callable[[str], None] | None = None,
) -> TransferKit:
    """Write ``<adapter_dir>/transfer_kit/`` from the adapter's training rows (chat rows).

    Seeds: ``options.seeds`` rows picked with ``options.seed``. Positives: up to
    ``options.positives`` real inputs; negatives: as many inputs the source base writes
    few-shot from the seeds (sampled). The discriminator LoRA is trained with the studio's
    training loop on ``options.discriminator_base`` (default: the source base).
    """
    options = options or KitOptions()
    say = log or (reporter.log if reporter is not None else (lambda message: None))
    examples = task_examples(rows)
    if len(examples) < 2:
        raise ValidationFailed("a transfer kit needs at least 2 chat rows")
    seeds = pick(examples, options.seeds, options.seed)
    positives = [e["input"] for e in pick(examples, options.positives, options.seed + 1)]
    disc_base = Path(options.discriminator_base or source_base)
    work = Path(work_dir)

    say(f"transfer kit: {len(seeds)} seeds; writing {len(positives)} negative inputs with the source base")
    writer = open_engine(source_base, device, slots=1)
    negatives = write_inputs(
        writer,
        [s["input"] for s in seeds],
        options.fewshot,
        len(positives),
        temperature=options.temperature,
        top_p=options.top_p,
        max_tokens=options.max_input_tokens,
        seed=options.seed,
    )
    del writer
    negatives = [text for text in negatives if text]  # an empty line is no input to judge
    if not negatives:
        raise ValidationFailed("the base wrote no input at all from the seeds; check the few-shot format")

    out = kit_dir_for(adapter_dir)
    staging = work / "kit"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    say(f"training the discriminator on {len(positives)} real and {len(negatives)} generated inputs")
    trained = train_chat_lora(
        disc.training_rows(positives, negatives, options.question),
        disc_base,
        staging / DISCRIMINATOR_DIR,
        hyper=options.hyper,
        variant_params={"r": options.discriminator_r, "lora_alpha": 2.0 * options.discriminator_r},
        seed=options.seed,
        device=device,
        work_dir=work / "discriminator-run",
        settings=settings,
        reporter=reporter,
    )
    judge = open_engine(disc_base, device, slots=1)
    scores = disc.p_real(judge, staging / DISCRIMINATOR_DIR, positives + negatives, options.question)
    del judge
    right = sum(s > 0.5 for s in scores[: len(positives)]) + sum(s <= 0.5 for s in scores[len(positives) :])
    accuracy = right / len(scores)
    say(f"discriminator: {accuracy:.0%} right on its training inputs (final loss {trained['final_loss']:.3f})")

    with open(staging / SEEDS_FILE, "w", encoding="utf-8") as handle:
        for seed_row in seeds:
            handle.write(json.dumps(seed_row) + "\n")
    meta = {
        "version": KIT_VERSION,
        "source_base": str(source_base),
        "discriminator_base": str(disc_base),
        "question": options.question,
        "fewshot": options.fewshot.model_dump(),
        "seeds": len(seeds),
        "positives": len(positives),
        "negatives": len(negatives),
        "discriminator_train_accuracy": accuracy,
        "discriminator_final_loss": trained["final_loss"],
        "options": options.model_dump(mode="json"),
    }
    (staging / KIT_FILE).write_text(json.dumps(meta, indent=2))
    if out.exists():
        shutil.rmtree(out)
    shutil.move(str(staging), str(out))  # whole or not at all: a reader never sees half a kit
    return load_transfer_kit(out)


def load_transfer_kit(path: str | Path, discriminator_base: str | Path | None = None) -> TransferKit:
    """Read a kit (the kit dir itself, or the adapter dir that holds one).

    ``discriminator_base`` overrides the base recorded in kit.json (a model moved since).
    """
    path = Path(path)
    if not (path / KIT_FILE).exists() and (path / KIT_DIR / KIT_FILE).exists():
        path = path / KIT_DIR
    if not (path / KIT_FILE).exists():
        raise ValidationFailed(f"{path} holds no transfer kit ({KIT_FILE} is missing)")
    meta = json.loads((path / KIT_FILE).read_text())
    seeds = [json.loads(line) for line in (path / SEEDS_FILE).read_text(encoding="utf-8").splitlines() if line.strip()]
    return TransferKit(
        path=path,
        seeds=seeds,
        discriminator_dir=path / DISCRIMINATOR_DIR,
        discriminator_base=Path(discriminator_base or meta["discriminator_base"]),
        source_base=meta["source_base"],
        question=meta["question"],
        fewshot=FewShotFormat(**meta["fewshot"]),
        meta=meta,
    )
