"""One DP-SGD step over the trainable LoRA tensors, and a small trainer around it.

Per step (spec composition.md §4): Poisson-sample rows with rate q = L/n; per-sample gradients of
the trainable tensors only (lora_B alone when lora_A is frozen, e.g. FFA-LoRA); clip each sample's
global norm to C; sum; add N(0, σ²C²I); divide by L (the EXPECTED batch size, so the realised size,
itself private, never enters the update); hand the result to any torch optimizer as ``.grad``.

:func:`make_dp_trainer` builds a :class:`DPTrainer` on encoded rows (``input_ids``/``labels`` as the
studio's tokeniser makes them); the federated client and ordinary training both drive it with
``run(steps)``, which checks the ε budget before the first step and records every step in the ledger.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from studio.privacy.accounting import DEFAULT_DELTA, PrivacyLedger, check_budget
from studio.privacy.per_sample import clipped_sum, mask_style, per_sample_grads, trainable_parameters
from studio.privacy.sampling import make_generator, poisson_sample
from studio.training.data import collate


class SilentNoOpError(RuntimeError):
    """A DP step handed the optimizer a non-zero gradient and no trainable weight moved."""


@dataclass
class DPConfig:
    """How private each step is: noise σ, clipping norm C, sampling rate q, and the ε budget (None: none)."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    delta: float = DEFAULT_DELTA
    target_epsilon: float | None = None
    seed: int | None = None  # None: sampling and noise from OS entropy (what a real private run wants)
    vmap_chunk: int | None = None  # samples per vmap call (memory bound); None: all at once

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0:
            raise ValueError("noise_multiplier must be ≥ 0")
        if not self.max_grad_norm > 0:
            raise ValueError("max_grad_norm must be > 0 (math.inf disables clipping)")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError("sample_rate must be in (0, 1]")


@dataclass
class StepResult:
    """What one DP step did: rows sampled, their mean loss before the step, per-sample norms before clipping."""

    rows: int
    loss: float | None
    norms: list[float] = field(default_factory=list)


def privatise(
    summed: dict[str, Any], max_grad_norm: float, noise_multiplier: float, expected_batch_size: float, generator: Any
) -> dict[str, Any]:
    """(Σ clipped grads + N(0, σ²C²I)) / L for every tensor; σ = 0 adds nothing (also when C = inf)."""
    import torch

    out = {}
    std = noise_multiplier * max_grad_norm if noise_multiplier > 0 else 0.0
    for name, total in summed.items():
        if std:
            noise = torch.normal(0.0, std, size=total.shape, generator=generator, dtype=torch.float32)
            total = total + noise.to(device=total.device, dtype=total.dtype)
        out[name] = total / expected_batch_size
    return out


def dp_step(
    model: Any,
    optimizer: Any,
    batch: dict[str, Any] | None,
    config: DPConfig,
    expected_batch_size: float,
    generator: Any,
    task: str = "causal-lm",
    causal: bool = True,
) -> StepResult:
    """One DP-SGD step on a collated, right-padded batch (None or empty: noise only, as DP-SGD requires)."""
    import torch

    live = trainable_parameters(model)
    if batch is not None and batch["input_ids"].shape[0] > 0:
        grads, losses = per_sample_grads(model, batch, task, causal, config.vmap_chunk)
        summed, norms = clipped_sum(grads, config.max_grad_norm)
        rows, loss, norm_list = int(losses.shape[0]), float(losses.mean()), norms.tolist()
    else:
        summed = {name: torch.zeros_like(p) for name, p in live.items()}
        rows, loss, norm_list = 0, None, []
    update = privatise(summed, config.max_grad_norm, config.noise_multiplier, expected_batch_size, generator)
    for name, p in live.items():
        p.grad = update[name].to(p.dtype)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(rows=rows, loss=loss, norms=norm_list)


class DPTrainer:
    """DP-SGD on a fixed set of encoded rows, with its own sampler, noise generator and privacy ledger."""

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        examples: Sequence[dict[str, Any]],
        config: DPConfig,
        pad_id: int,
        task: str = "causal-lm",
        ledger: PrivacyLedger | None = None,
    ) -> None:
        if not examples:
            raise ValueError("DP-SGD needs at least one row")
        self.model, self.optimizer, self.examples = model, optimizer, list(examples)
        self.config, self.pad_id, self.task = config, pad_id, task
        self.ledger = ledger if ledger is not None else PrivacyLedger(delta=config.delta)
        self.expected_batch_size = config.sample_rate * len(self.examples)
        seed = config.seed
        self.sampler = make_generator(seed)
        self.noise = make_generator(None if seed is None else seed + 1)
        self.causal: bool | None = None
        self._verified_moves = False

    def plan(self, steps: int) -> float | None:
        """ε after ``steps`` more steps (None without a budget); raises PrivacyBudgetExceeded when over the budget."""
        c = self.config
        if c.target_epsilon is None:
            return None  # nothing to enforce: skip the accountant (about a second per call at large q)
        return check_budget(
            c.target_epsilon,
            noise_multiplier=c.noise_multiplier,
            sample_rate=c.sample_rate,
            steps=steps,
            delta=self.ledger.delta,
            ledger=self.ledger,
        )

    def sample(self) -> list[int]:
        """Row indices of the next step (Poisson, rate q)."""
        return poisson_sample(len(self.examples), self.config.sample_rate, self.sampler)

    def step(self) -> StepResult:
        """Sample, run one DP step, record it in the ledger; the first step that should move weights is checked."""
        import torch

        picked = self.sample()
        batch = collate([self.examples[i] for i in picked], self.pad_id) if picked else None
        device = next(iter(trainable_parameters(self.model).values())).device
        if batch is not None:
            batch = {k: v.to(device) for k, v in batch.items()}
            if self.causal is None:
                self.causal = mask_style(self.model, batch)
        before = None
        if not self._verified_moves:
            before = {n: p.detach().clone() for n, p in trainable_parameters(self.model).items()}
        result = dp_step(
            self.model,
            self.optimizer,
            batch,
            self.config,
            self.expected_batch_size,
            self.noise,
            self.task,
            bool(self.causal) if self.causal is not None else True,
        )
        self.ledger.record(self.config.noise_multiplier, self.config.sample_rate)
        if before is not None and (result.rows or self.config.noise_multiplier > 0):
            # The spec's warning: a DP wrapper that silently stops updating the model. Check once, for real.
            after = trainable_parameters(self.model)
            if all(torch.equal(before[n], p.detach()) for n, p in after.items()):
                raise SilentNoOpError(
                    "DP-SGD step 1 changed no trainable weight: the optimizer does not hold the model's "
                    "trainable tensors (model moved or re-wrapped after the optimizer was built?) or lr = 0"
                )
            self._verified_moves = True
        return result

    def run(self, steps: int) -> list[StepResult]:
        """Check the budget for ``steps`` steps, then run them."""
        self.plan(steps)
        return [self.step() for _ in range(steps)]

    def epsilon(self) -> float:
        """ε spent so far by the rows this trainer (and its ledger's earlier rounds) trained on."""
        return self.ledger.epsilon()


def make_dp_trainer(
    model: Any,
    optimizer: Any,
    examples: Sequence[dict[str, Any]],
    *,
    pad_id: int,
    noise_multiplier: float,
    max_grad_norm: float,
    batch_size: int | None = None,
    sample_rate: float | None = None,
    target_epsilon: float | None = None,
    delta: float = DEFAULT_DELTA,
    seed: int | None = None,
    task: str = "causal-lm",
    ledger: PrivacyLedger | None = None,
    vmap_chunk: int | None = None,
) -> DPTrainer:
    """A DP-SGD trainer for ``model``'s trainable tensors on ``examples``.

    Give the expected batch size L (q = L/n) or q directly. Pass the same ``ledger`` across rounds
    (federated client) so ε covers every step the client's rows were used in.
    """
    if (batch_size is None) == (sample_rate is None):
        raise ValueError("give exactly one of batch_size or sample_rate")
    rate = sample_rate if sample_rate is not None else min(1.0, batch_size / len(examples))
    config = DPConfig(
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm if max_grad_norm is not None else math.inf,
        sample_rate=rate,
        delta=delta,
        target_epsilon=target_epsilon,
        seed=seed,
        vmap_chunk=vmap_chunk,
    )
    return DPTrainer(model, optimizer, examples, config, pad_id, task, ledger)
