"""Training the CVAE on (θ, c) pairs with the spec's defaults: AdamW lr 2e-4, batch 2, cosine annealing, seed 2024.

Everything random (initial weights, batch order, the reparameterisation noise) comes from
``seed`` inside a forked RNG, so a run is reproducible and leaves the caller's global RNG
alone. The learning rate anneals (cosine) to 0 over all steps of all epochs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from studio.adapter_generation.cvae import CVAEConfig, build_cvae
from studio.errors import ValidationFailed

LEARNING_RATE = 2e-4
BATCH_SIZE = 2
SEED = 2024

# progress(epoch, epochs, mean loss of the epoch); it may raise (e.g. JobCancelled) to stop the run.
Progress = Callable[[int, int, float], None]


@dataclass
class TrainResult:
    """The trained network (eval mode) and the mean (loss, mse, kl) of every epoch."""

    model: Any
    history: list[tuple[float, float, float]] = field(default_factory=list)


def epoch_batches(n: int, batch_size: int, generator: Any) -> list[list[int]]:
    """A shuffled split of range(n) into batches; a last batch of one joins the one before.

    BatchNorm cannot normalise a single sample whose deepest feature map has length 1, and a
    lone sample would give that step's statistics no spread at all.
    """
    import torch

    order = torch.randperm(n, generator=generator).tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2].extend(batches.pop())
    return batches


def train_cvae(
    thetas: Any,
    conds: Any,
    config: CVAEConfig,
    *,
    epochs: int,
    lr: float = LEARNING_RATE,
    batch_size: int = BATCH_SIZE,
    seed: int = SEED,
    device: Any = "cpu",
    progress: Progress | None = None,
) -> TrainResult:
    """Fit a CVAE to rows of ``thetas`` (N, D) conditioned on the matching rows of ``conds`` (N, cond_dim)."""
    import torch

    if thetas.ndim != 2 or conds.ndim != 2 or thetas.shape[0] != conds.shape[0]:
        raise ValidationFailed("thetas and task vectors must be two matrices with one row per checkpoint")
    if thetas.shape[0] < 2:
        raise ValidationFailed("a generator needs at least two checkpoints to train on")
    if epochs < 1:
        raise ValidationFailed("epochs must be at least 1")
    thetas = thetas.to(device, torch.float32)
    conds = conds.to(device, torch.float32)
    n = thetas.shape[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        order_rng = torch.Generator().manual_seed(seed)
        model = build_cvae(config, thetas.shape[1], conds.shape[1]).to(device)
        model.fit_condition(conds)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        steps_per_epoch = len(epoch_batches(n, batch_size, torch.Generator().manual_seed(0)))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
        result = TrainResult(model)
        model.train()
        for epoch in range(1, epochs + 1):
            sums = [0.0, 0.0, 0.0]
            batches = epoch_batches(n, batch_size, order_rng)
            for batch in batches:
                index = torch.tensor(batch, device=device)
                loss, mse, kl = model.loss(thetas[index], conds[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                for i, value in enumerate((loss, mse, kl)):
                    sums[i] += float(value.detach()) * len(batch)
            result.history.append((sums[0] / n, sums[1] / n, sums[2] / n))
            if progress is not None:
                progress(epoch, epochs, result.history[-1][0])
    model.eval()
    return result
