"""Adapters kept along training (``hyper.keep_checkpoints``): what an ICM-LoRA generator learns from.

ICM-LoRA (spec §6) trains its generator on "LoRA checkpoints along training, one per
epoch over the later epochs". Here epochs may be fractional and ``max_steps`` overrides
them, so the spacing is in steps: N adapters evenly spaced over the last half of the run,
the last one being the final adapter (a run shorter than 2·N steps keeps its last N steps).

Unlike the resumable checkpoints (:mod:`studio.training.checkpoint`: trainable tensors +
optimizer state, in the job directory, only the newest two kept), these are the variant's
own export -- the same ``save_adapter`` the final adapter goes through, so every kept
adapter has the final one's files and tensor layout (a standard PEFT LoRA for ``lora``),
plus the final adapter's class names and run settings once registered (RUN_FILES).
They are written to ``<job dir>/kept_adapters/step-NNNNNN/`` while training (so a resumed
job keeps those written before it stopped) and moved into ``<adapter dir>/checkpoints/``
once the adapter is registered.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

WORK_FOLDER = "kept_adapters"
ADAPTER_FOLDER = "checkpoints"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
# What the final adapter's folder says about its run, true of every adapter kept along it: the class names
# and the run's settings (evaluation pools a sequence's windows as it was trained, read from the latter).
RUN_FILES = ("labels.json", "reproducibility.json")


def kept_steps(total: int, keep: int) -> list[int]:
    """The steps (ascending, ending at ``total``) whose adapters are kept; see the module docstring."""
    keep = min(keep, total)
    if keep <= 0:
        return []
    span = max(keep, total // 2)  # the last ``span`` steps hold the kept ones, at least one step apart
    return sorted({total - (k * span) // keep for k in range(keep)})


def step_dir(root: Path, step: int) -> Path:
    """``root/step-000123``: sorted names sort by step."""
    return Path(root) / f"step-{step:06d}"


def save_kept_adapter(work_dir: Path, step: int, model: Any, variant: Any, ectx: Any) -> Path:
    """Export the adapter as it is after ``step`` (written aside and renamed: never half-written)."""
    root = Path(work_dir) / WORK_FOLDER
    final, tmp = step_dir(root, step), root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    was_training = model.training
    try:
        variant.save_adapter(model, tmp, ectx)
    finally:
        model.train(was_training)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def move_into_adapter(work_dir: Path, adapter_dir: Path, total: int, keep: int) -> list[Path]:
    """Move the kept adapters into ``adapter_dir/checkpoints/``; the final step is a copy of the adapter itself.

    Each kept adapter also gets the final adapter's RUN_FILES, so it loads and scores like the final one.
    Returns the kept adapter directories in training order.
    """
    steps = kept_steps(total, keep)
    if not steps:
        return []
    out_root = Path(adapter_dir) / ADAPTER_FOLDER
    out_root.mkdir(parents=True, exist_ok=True)
    work_root = Path(work_dir) / WORK_FOLDER
    kept = []
    for step in steps:
        target = step_dir(out_root, step)
        if step == total:
            target.mkdir(exist_ok=True)
            for name in PEFT_FILES:
                if (Path(adapter_dir) / name).is_file():
                    shutil.copy2(Path(adapter_dir) / name, target / name)
        elif step_dir(work_root, step).is_dir():
            shutil.move(str(step_dir(work_root, step)), str(target))
        else:
            continue  # never written (defensive: every planned step before the last is saved as it passes)
        for name in RUN_FILES:
            if (Path(adapter_dir) / name).is_file():
                shutil.copy2(Path(adapter_dir) / name, target / name)
        kept.append(target)
    shutil.rmtree(work_root, ignore_errors=True)
    return kept


def kept_adapter_dirs(adapter_dir: str | Path) -> list[Path]:
    """The kept adapters of a registered adapter, in training order (empty when it kept none)."""
    root = Path(adapter_dir) / ADAPTER_FOLDER
    if not root.is_dir():
        return []
    return [p for p in sorted(root.glob("step-*")) if (p / PEFT_FILES[1]).is_file()]
