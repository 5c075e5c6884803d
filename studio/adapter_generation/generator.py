"""A trained ICM-LoRA generator: train one on checkpoints of several tasks, save/load it, generate adapters.

A generator directory holds ``generator.safetensors`` (the CVAE's weights and buffers)
and ``generator.json`` (network config, D, c size, and one *reference* per training
task: its task vector, the per-tensor stats of its last checkpoint and that checkpoint's
``adapter_config.json``). It does not need the training checkpoints any more.

Generation (spec §6): z ~ N(0, I), decode with c_t, split θ by the stored numels,
de-normalise with a reference checkpoint's stats, save as a PEFT LoRA. The spec leaves
the reference open **[verify]**; by default it is the reference of the training task
whose task vector is nearest to c_t (cosine similarity): per-tensor scales differ between
tasks, and a nearby task's scales are the best guess for a new one. A named reference can
be asked for instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.adapter_generation.cvae import CVAEConfig, build_cvae
from studio.adapter_generation.flatten import (
    Layout,
    check_same_layout,
    flatten_adapter,
    read_adapter_config,
    unflatten,
    write_peft_dir,
)
from studio.adapter_generation.training import SEED, Progress, train_cvae
from studio.errors import ValidationFailed

WEIGHTS = "generator.safetensors"
META = "generator.json"


@dataclass(frozen=True)
class Checkpoint:
    """One training item: a PEFT LoRA directory and the task it was trained for."""

    path: Path
    task: str


@dataclass
class Reference:
    """What a generated adapter borrows from a training task: stats to de-normalise with, and its config."""

    task: str
    task_vector: Any  # float32 (cond_dim,)
    layout: Layout
    adapter_config: dict[str, Any]


@dataclass
class Generator:
    """A trained CVAE plus the references needed to turn its output into PEFT adapters."""

    model: Any
    config: CVAEConfig
    references: list[Reference]
    history: list[tuple[float, float, float]]

    @property
    def input_size(self) -> int:
        """D, the length of θ."""
        return self.model.input_size

    def parameter_count(self) -> int:
        """Trainable parameters of the network."""
        return sum(p.numel() for p in self.model.parameters())

    def reference(self, task_vector: Any = None, task: str | None = None) -> Reference:
        """The reference named ``task``, else the one whose task vector is nearest ``task_vector`` (cosine)."""
        import torch

        if task is not None:
            for ref in self.references:
                if ref.task == task:
                    return ref
            raise ValidationFailed(f"the generator has no reference task {task!r}")
        if task_vector is None:
            return self.references[0]
        stacked = torch.stack([r.task_vector for r in self.references])
        scores = torch.nn.functional.cosine_similarity(stacked, task_vector.float()[None, :], dim=1)
        return self.references[int(scores.argmax())]

    def save(self, out_dir: str | Path) -> Path:
        """Write the generator directory."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
        meta = {
            "config": self.config.to_dict(),
            "input_size": self.model.input_size,
            "cond_dim": self.model.cond_dim,
            "history": [list(h) for h in self.history],
            "references": [
                {
                    "task": r.task,
                    "task_vector": [float(x) for x in r.task_vector.tolist()],
                    "layout": r.layout.to_dict(),
                    "adapter_config": r.adapter_config,
                }
                for r in self.references
            ],
        }
        (out / META).write_text(json.dumps(meta), encoding="utf-8")
        return out

    @classmethod
    def load(cls, folder: str | Path) -> Generator:
        """Read a generator directory written by :meth:`save` (safetensors only, no pickles)."""
        import torch
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / META).is_file() or not (folder / WEIGHTS).is_file():
            raise ValidationFailed(f"{folder} is not a generator directory ({META} and {WEIGHTS} expected)")
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        config = CVAEConfig.from_dict(meta["config"])
        model = build_cvae(config, meta["input_size"], meta["cond_dim"])
        model.load_state_dict(load_file(str(folder / WEIGHTS), device="cpu"))
        model.eval()
        references = [
            Reference(
                r["task"],
                torch.tensor(r["task_vector"], dtype=torch.float32),
                Layout.from_dict(r["layout"]),
                r["adapter_config"],
            )
            for r in meta["references"]
        ]
        return cls(model, config, references, [tuple(h) for h in meta.get("history", [])])


def train_generator(
    checkpoints: Sequence[Checkpoint],
    task_vectors: dict[str, Any],
    config: CVAEConfig,
    *,
    epochs: int,
    seed: int = SEED,
    progress: Progress | None = None,
    **train_kwargs: Any,
) -> Generator:
    """Train a CVAE on ``checkpoints`` (all of one base and LoRA shape), conditioned on each task's vector.

    The reference of a task is its last checkpoint in ``checkpoints`` (the latest along training
    when they are given in training order).
    """
    import torch

    missing = sorted({c.task for c in checkpoints} - set(task_vectors))
    if missing:
        raise ValidationFailed(f"no task vector for task(s) {', '.join(missing)}")
    flat = [flatten_adapter(c.path) for c in checkpoints]
    check_same_layout([layout for _, layout in flat], [str(c.path) for c in checkpoints])
    thetas = torch.stack([theta for theta, _ in flat]).float()
    conds = torch.stack([task_vectors[c.task].float() for c in checkpoints])
    result = train_cvae(thetas, conds, config, epochs=epochs, seed=seed, progress=progress, **train_kwargs)
    last: dict[str, int] = {c.task: i for i, c in enumerate(checkpoints)}
    references = [
        Reference(task, task_vectors[task].float().cpu(), flat[i][1], read_adapter_config(checkpoints[i].path))
        for task, i in last.items()
    ]
    return Generator(result.model.cpu(), config, references, result.history)


def sample_theta(generator: Generator, task_vector: Any, *, seed: int = SEED) -> Any:
    """One θ (float32, length D) for ``task_vector``, from z ~ N(0, I) drawn with ``seed``."""
    import torch

    model = generator.model.eval()
    rng = torch.Generator().manual_seed(seed)
    return model.sample(task_vector.float()[None, :], generator=rng)[0]


def generate_adapter(
    generator: Generator,
    task_vector: Any,
    out_dir: str | Path,
    *,
    seed: int = SEED,
    reference_task: str | None = None,
) -> Path:
    """Sample θ for ``task_vector`` and save it as a PEFT LoRA directory at ``out_dir``."""
    theta = sample_theta(generator, task_vector, seed=seed)
    ref = generator.reference(task_vector, reference_task)
    return write_peft_dir(unflatten(theta, ref.layout), ref.adapter_config, out_dir)
