"""Train a plain LoRA on chat rows with the studio's own training loop (prompt masked) and save it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from studio.progress import MemoryReporter, Reporter
from studio.schema import TrainingHyperParams, TrainRequest


def chat_lora_request(
    base_path: str | Path, *, hyper: TrainingHyperParams, variant_params: dict[str, Any], seed: int
) -> TrainRequest:
    """The run :func:`train_chat_lora` makes: also what the time estimate prices (the transfer kit's discriminator)."""
    return TrainRequest(
        dataset_id=1,  # the rows are not a registered dataset; the id is only a label in checkpoints
        base_model=str(base_path),
        task="causal-lm",
        variant="lora",
        variant_params=variant_params,
        hyper=hyper.model_copy(update={"loss_on": "response"}),
        seed=seed,
    )


def train_chat_lora(
    rows: Sequence[dict[str, Any]],
    base_path: str | Path,
    out_dir: str | Path,
    *,
    hyper: TrainingHyperParams,
    variant_params: dict[str, Any],
    seed: int,
    device: Any,
    work_dir: str | Path,
    settings: Any = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Train LoRA on ``rows`` (chat JSONL rows) over ``base_path``; writes a standard PEFT dir to ``out_dir``.

    Reuses :func:`studio.training.loop.run_training` (loss on the reply only: ``loss_on`` is forced
    to "response") and the variant's own export. Returns the final loss, steps and ranks.
    """
    from studio.training.loop import run_training
    from studio.training.memory import release_memory
    from studio.training.setup import TrainingData

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data_path = work / "rows.jsonl"
    data_path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    request = chat_lora_request(base_path, hyper=hyper, variant_params=variant_params, seed=seed)
    result = run_training(
        request,
        reporter or MemoryReporter(),
        settings=settings,
        device=device,
        work_dir=work / "run",
        dataset=TrainingData(path=data_path, report={"task": "causal-lm"}, name="synthetic"),
        base_path=Path(base_path),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = result.variant.save_adapter(result.model, out, result.export_context())
    summary = {"final_loss": result.final_loss, "steps": result.total_steps, "ranks": report.ranks}
    del result
    release_memory()
    return summary
