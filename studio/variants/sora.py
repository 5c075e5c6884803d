"""SoRA (Ding et al., 2023): LoRA with a gate per rank component, sparsified by a proximal L1 step (spec §5).

``h = W0 x + s B (g ⊙ (A drop(x)))`` with g ∈ R^{r_max}, s = α/r_max. Init: A Kaiming-uniform,
B = 0, g ~ N(0, 1). Two optimizers as in the official code: AdamW with weight decay for
everything but the gates (no decay on norms and biases) and AdamW without decay for the
gates, with its own linear schedule. The loss adds ``λ_L1 · Σ|g| / #gates``; after each
gate step the gates are thresholded with ξ (``threshold_mode``, see
:mod:`studio.variants._sora_schedule`). Gradients are clipped at 0.1 and the norm layers
are trained, as in the official configuration. The true rank of a module is nnz(g).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from studio.variants import _sora_schedule as sched
from studio.variants._adapter_wrap import AdapterLinear, adapter_layers, norm_module_names, set_trainable, wrap_linears
from studio.variants.base import (
    BuildContext,
    ExportContext,
    ExportReport,
    OptimConfig,
    Optimization,
    Paper,
    Variant,
    VariantParams,
    lr_lambda,
)


class SoraParams(VariantParams):
    r: int = Field(8, ge=1, le=1024, description="Largest rank r_max (gates switch components off from there).")
    lora_alpha: float = Field(16.0, gt=0, le=8192, description="Scaling numerator: the update is scaled by alpha / r.")
    lora_dropout: float = Field(0.0, ge=0.0, le=0.9, description="Dropout on the adapter input (official: 0).")
    xi: float = Field(3e-4, ge=0.0, le=1.0, description="Gate threshold ξ applied after every gate step.")
    l1_lambda: float = Field(10.0, ge=0.0, le=1e4, description="Weight λ of the L1 penalty λ·Σ|g| / #gates.")
    threshold_mode: Literal["official", "paper"] = Field(
        "official",
        description="official: zero |g| < 2ξ, move the rest by ξ (the official optimizer); "
        "paper: soft threshold sign(g)·max(|g|−ξ, 0).",
    )
    xi_times_lr: bool = Field(False, description="Multiply ξ by the gates' current learning rate.")
    gate_lr: float | None = Field(None, gt=0.0, le=1.0, description="Learning rate of the gates; empty = the run's.")
    max_grad_norm: float = Field(0.1, gt=0.0, le=100.0, description="Gradient clipping threshold (official: 0.1).")
    train_norms: bool = Field(
        True, description="Also train the normalisation layers (official config); they are saved with the adapter."
    )
    schedule: Literal["none", "sparsify"] = Field(
        "none",
        description="sparsify: the sparsifying scheduler — an initial phase at ξ0, then ξ raised stage by "
        "stage to ξ_max to trace accuracy against the number of kept components.",
    )
    schedule_stages: int = Field(7, ge=2, le=100, description="Number of ξ values n (the initial phase is the first).")
    schedule_xi0: float = Field(0.0, ge=0.0, le=1.0, description="ξ of the initial phase (scheduler only).")
    schedule_xi_max: float = Field(7e-4, ge=0.0, le=1.0, description="Last ξ of the scheduler.")
    schedule_l1_lambda: float = Field(1e-3, ge=0.0, le=1e4, description="L1 weight λ used with the scheduler.")
    schedule_spacing: Literal["linear", "log_linear", "exp_linear"] = Field(
        "linear", description="How the ξ values are spaced between ξ0 and ξ_max."
    )
    schedule_initial_fraction: float = Field(
        50 / 140,
        gt=0.0,
        lt=1.0,
        description="Share of the steps in the initial phase; the rest is split evenly over the later stages "
        "(official: 50 epochs, then 6 × 15).",
    )
    stage_lr: Literal["official", "restart"] = Field(
        "official",
        description="official: the learning-rate schedules run over the initial phase only and are reused "
        "afterwards (≈ 0 in later stages); restart: each stage gets its own warmup and decay.",
    )

    @model_validator(mode="after")
    def _spacing_fits(self) -> SoraParams:
        if self.schedule == "sparsify" and self.schedule_spacing == "exp_linear" and self.schedule_xi0 <= 0:
            raise ValueError("exp_linear spacing needs schedule_xi0 > 0")
        return self


class SoraLinear(AdapterLinear):
    """``W0 x + s · ((A drop(x)) ⊙ g) Bᵀ`` with s = α / r_max."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__(base_layer, dropout)
        dev = base_layer.weight.device
        self.r, self.scaling = r, float(alpha) / r
        # Official init order: gate ~ N(0, 1) first, then A Kaiming-uniform (a=√5); B = 0.
        self.gate = nn.Parameter(torch.randn(r, device=dev, dtype=torch.float32))
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=dev, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=dev, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.to(self.lora_A.dtype) @ self.lora_A.T) * self.gate) @ self.lora_B.T * self.scaling

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact (B′, A′) over the non-zero gates: B′ = s·B[:, idx]·diag(g[idx]), A′ = A[idx]."""
        with torch.no_grad():
            idx = torch.nonzero(self.gate != 0).flatten()
            b = self.lora_B[:, idx] * (self.gate[idx] * self.scaling)
            return b.float().cpu(), self.lora_A[idx].float().cpu()

    def delta_weight(self) -> torch.Tensor:
        with torch.no_grad():
            return (self.scaling * (self.lora_B * self.gate) @ self.lora_A).float().cpu()

    def nnz(self) -> int:
        return int((self.gate != 0).sum())


class Sora(Variant):
    name = "sora"
    title = "SoRA (sparse gated ranks)"
    summary = "Starts each layer at rank r and switches off rank components it does not need, layer by layer."
    description = (
        "SoRA gives every piece (rank component) of each adapter an on/off dial. During training a gentle "
        "pressure pushes the dials towards zero, and any dial that gets close enough is switched off "
        "exactly. Layers that need little change end up with few pieces, layers that need more keep them, "
        "so the final adapter is smaller than a LoRA of the same starting rank and the chart shows where "
        "the model needed to change."
    )
    when_to_use = (
        "When you want the rank per layer chosen for you and a smaller adapter. Official settings: r 8, "
        "alpha 16, all linear layers, ξ 3e-4, λ 10, lr 8e-4, warmup 6%, weight decay 0.1, clipping 0.1."
    )
    paper = Paper("Sparse Low-rank Adaptation of Pre-trained Language Models", 2023, "2311.11696")
    Params = SoraParams
    changes_rank = True

    def __init__(self, params: SoraParams | None = None):
        super().__init__(params)
        self.total_steps = 1
        self._gate_optimizer: Any = None
        self._norms: list[str] = []
        self._last_step = 0

    # -- schedule helpers -------------------------------------------------------------------------

    @property
    def scheduled(self) -> bool:
        return self.params.schedule == "sparsify"

    def stage_starts(self) -> list[int]:
        """First step of each stage (just [1] without the scheduler): the chart's stage boundaries."""
        p = self.params
        if not self.scheduled:
            return [1]
        return sched.stage_starts(self.total_steps, p.schedule_stages, p.schedule_initial_fraction)

    def stage_ends(self, total_steps: int) -> list[int]:
        """Last step of every stage of the sparsifying scheduler (nothing without it)."""
        if not self.scheduled:
            return []
        self.total_steps = max(1, int(total_steps))
        starts = self.stage_starts()
        return sorted({*(s - 1 for s in starts[1:] if 1 < s <= self.total_steps + 1), self.total_steps})

    def xi_at(self, step: int) -> float:
        """ξ used after optimizer step ``step`` (before any lr multiplication)."""
        p = self.params
        if not self.scheduled:
            return p.xi
        values = sched.xi_values(p.schedule_xi0, p.schedule_xi_max, p.schedule_stages, p.schedule_spacing)
        return values[sched.stage_of(step, self.stage_starts())]

    @property
    def l1_lambda(self) -> float:
        return self.params.schedule_l1_lambda if self.scheduled else self.params.l1_lambda

    # -- build and optimisation -------------------------------------------------------------------

    def build(self, ctx: BuildContext) -> Any:
        p = self.params
        self.total_steps = max(1, int(ctx.total_steps))
        wrap_linears(
            ctx.model, ctx.target_modules, lambda name, lin: SoraLinear(lin, p.r, p.lora_alpha, p.lora_dropout)
        )
        self._norms = norm_module_names(ctx.model) if p.train_norms else []
        set_trainable(ctx.model, ctx.modules_to_save, self._norms)
        return ctx.model

    def configure_optimization(self, model: Any, cfg: OptimConfig) -> Optimization:
        """AdamW (decay except norms/biases) + gate AdamW (no decay), each with its schedule; clip 0.1."""
        p = self.params
        gates = {id(layer.gate) for layer in adapter_layers(model, SoraLinear).values()}
        norm_params = {id(q) for n in self._norms for q in model.get_submodule(n).parameters()}
        decay, no_decay = [], []
        for name, q in model.named_parameters():
            if not q.requires_grad or id(q) in gates:
                continue
            (no_decay if id(q) in norm_params or name.endswith("bias") else decay).append(q)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        main = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=cfg.betas, eps=cfg.eps)
        gate_params = [layer.gate for layer in adapter_layers(model, SoraLinear).values()]
        gate_opt = torch.optim.AdamW(
            gate_params, lr=p.gate_lr or cfg.learning_rate, weight_decay=0.0, betas=cfg.betas, eps=cfg.eps
        )
        self._gate_optimizer = gate_opt
        total = max(1, int(cfg.total_steps))
        self.total_steps = total
        if self.scheduled:
            starts = self.stage_starts()
            main_fn = sched.staged_lr_lambda(total, cfg.warmup_steps, cfg.scheduler, starts, p.stage_lr)
            gate_fn = sched.staged_lr_lambda(total, cfg.warmup_steps, "linear", starts, p.stage_lr)
        else:
            main_fn = lr_lambda(total, cfg.warmup_steps, cfg.scheduler)
            gate_fn = lr_lambda(total, cfg.warmup_steps, "linear")
        schedulers = [
            torch.optim.lr_scheduler.LambdaLR(main, main_fn),
            torch.optim.lr_scheduler.LambdaLR(gate_opt, gate_fn),
        ]
        return Optimization([main, gate_opt], schedulers, max_grad_norm=p.max_grad_norm)

    # -- training hooks ----------------------------------------------------------------------------

    def extra_loss(self, model: Any) -> Any | None:
        """λ · Σ|g| / (number of gate entries), over all modules."""
        if self.l1_lambda == 0:
            return None
        gates = [layer.gate for layer in adapter_layers(model, SoraLinear).values()]
        total = sum(g.numel() for g in gates)
        return self.l1_lambda * sum(g.abs().sum() for g in gates) / total

    def current_xi(self, step: int) -> float:
        """The effective threshold after step ``step`` (× the gates' current lr with ``xi_times_lr``)."""
        xi = self.xi_at(step)
        if self.params.xi_times_lr and self._gate_optimizer is not None:
            xi *= self._gate_optimizer.param_groups[0]["lr"]
        return xi

    def on_optimizer_step(self, model: Any, step: int) -> None:
        """The proximal step on every gate, right after the optimizers stepped."""
        self._last_step = step
        xi = self.current_xi(step)
        if xi <= 0:
            return
        with torch.no_grad():
            for layer in adapter_layers(model, SoraLinear).values():
                layer.gate.copy_(sched.apply_threshold(layer.gate, xi, self.params.threshold_mode))

    # -- rank log ----------------------------------------------------------------------------------

    def rank_allocation(self, model: Any) -> dict[str, int]:
        return {name: layer.nnz() for name, layer in adapter_layers(model, SoraLinear).items()}

    def rank_extra(self, model: Any) -> dict[str, dict[str, float]]:
        """nnz, sparsity, retained parameters nnz·(m+n), and (with the scheduler) stage and ξ."""
        out = {}
        for name, layer in adapter_layers(model, SoraLinear).items():
            nnz = layer.nnz()
            out[name] = {
                "nnz": float(nnz),
                "sparsity": 1.0 - nnz / layer.r,
                "retained_params": float(nnz * (layer.in_features + layer.out_features)),
            }
            if self.scheduled:
                out[name].update(self.stage_info(max(1, self._last_step)))
        return out

    def stage_info(self, step: int) -> dict[str, float]:
        """Stage index and ξ at ``step`` (for the stage boundaries of the chart)."""
        return {"stage": float(sched.stage_of(step, self.stage_starts())), "xi": self.xi_at(step)}

    # -- contract and export -------------------------------------------------------------------

    def delta_weights(self, model: Any) -> dict[str, Any]:
        return {name: layer.delta_weight() for name, layer in adapter_layers(model, SoraLinear).items()}

    def plain_lora_factors(self, model: Any) -> dict[str, tuple[Any, Any]]:
        """Exact factors over the surviving components; a module with no survivor has rank 0 (dropped)."""
        return {name: layer.factors() for name, layer in adapter_layers(model, SoraLinear).items()}

    def export_plain_lora(
        self, model: Any, out_dir: Path, ectx: ExportContext, rank: int | None = None
    ) -> ExportReport:
        """Plain LoRA export; trained norm layers travel as ``modules_to_save`` next to the heads."""
        extra = [n for n in self._norms if n not in ectx.modules_to_save]
        ectx = dataclasses.replace(ectx, modules_to_save=[*ectx.modules_to_save, *extra])
        return super().export_plain_lora(model, out_dir, ectx, rank)


VARIANT = Sora
