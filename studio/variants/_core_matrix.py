"""Shared machinery of the "middle matrix" variants (spec §6 and §7).

LoRA-XS, LoRA-SB, SLoRA, NLoRA and IntTune all adapt a frozen linear layer W0 (m × n) as

    h = W0 x + s · B · N · A · drop(x),   B (m × r), N (r × r), A (r × n), s = α / r,

and differ only in how B, N, A are initialised and which of them are trained. This module
holds the wrapped layer (:class:`CoreLinear`, an ``AdapterLinear``), a seeded randomised SVD
and the :class:`CoreMatrixVariant` base class, which provides ΔW, the exact plain-LoRA
factors, checkpoint extras and the ‖N − N0‖ / singular-value diagnostics. A subclass only
says how to initialise one layer (:meth:`CoreMatrixVariant.init_layer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from studio.variants._adapter_wrap import AdapterLinear, adapter_layers, wrap_linears
from studio.variants.base import BuildContext, Variant, VariantParams
from studio.variants.targets import find_target_linears

FACTORS = ("lora_A", "lora_core", "lora_B")


class CoreParams(VariantParams):
    """Shared knobs; ``lora_alpha = None`` means α = r (scale 1), the official setting of XS/SB."""

    lora_alpha: float | None = Field(
        None,
        gt=0,
        le=8192,
        description="Scaling numerator: the update is multiplied by alpha / r. Empty = alpha equals r (scale 1).",
    )
    lora_dropout: float = Field(0.0, ge=0.0, le=0.9, description="Dropout on the adapter's input while training.")


class SvdParams(CoreParams):
    """Knobs of the truncated SVD used by the LoRA-XS / LoRA-SB inits."""

    svd_method: Literal["randomized", "exact"] = Field(
        "randomized",
        description="randomized = seeded randomised SVD as in the official code; exact = full SVD (float64).",
    )
    svd_iters: int = Field(10, ge=0, le=100, description="Power iterations of the randomised SVD.")
    svd_seed: int = Field(42, ge=0, le=2**31 - 1, description="Seed of the randomised SVD's test matrix.")


def scaling(params: VariantParams) -> float:
    """s = α / r with the configured r (α = r, i.e. s = 1, when lora_alpha is empty)."""
    alpha = getattr(params, "lora_alpha", None)
    return 1.0 if alpha is None else float(alpha) / float(params.r)


def _flip_signs(u: torch.Tensor, vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make the largest-magnitude entry of every row of Vᵀ positive (sklearn's v-based svd_flip).

    A singular pair is only defined up to a joint sign; fixing it makes the init reproducible
    across SVD back-ends and devices.
    """
    idx = vh.abs().argmax(dim=1)
    signs = torch.sign(vh.gather(1, idx[:, None]).squeeze(1))
    signs[signs == 0] = 1
    return u * signs, vh * signs[:, None]


def truncated_svd(
    matrix: torch.Tensor, rank: int, method: str = "randomized", n_iter: int = 10, seed: int = 42, oversample: int = 10
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U_r (m×r), σ_r (r), V_rᵀ (r×n)) of ``matrix`` in fp32.

    ``randomized`` is Halko et al.'s algorithm as in scikit-learn's ``TruncatedSVD`` (the
    official LoRA-XS code: ``n_iter=10, random_state=42``, 10 oversamples), with QR
    re-orthonormalisation between power iterations; the Gaussian test matrix is drawn on the
    CPU from ``seed`` so the init does not depend on the device or the global RNG.
    ``exact`` is a full float64 SVD.
    """
    m, n = matrix.shape
    rank = min(rank, m, n)
    if method == "exact":
        u, s, vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
        u, s, vh = u[:, :rank], s[:rank], vh[:rank]
        u, vh = _flip_signs(u, vh)
        return u.float(), s.float(), vh.float()
    if method != "randomized":
        raise ValueError(f"unknown svd_method {method!r}")
    work = matrix.detach().float()
    k = min(rank + oversample, m, n)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    omega = torch.randn(n, k, generator=generator, dtype=torch.float32).to(work.device)
    q, _ = torch.linalg.qr(work @ omega)
    for _ in range(n_iter):
        q, _ = torch.linalg.qr(work.T @ q)
        q, _ = torch.linalg.qr(work @ q)
    small = q.T @ work  # k × n
    u_small, s, vh = torch.linalg.svd(small, full_matrices=False)
    u = q @ u_small
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    u, vh = _flip_signs(u, vh)
    return u.contiguous(), s.contiguous(), vh.contiguous()


@dataclass
class LayerInit:
    """Initial factors of one layer (fp32); ``residual`` subtracts s·B·N·A from W0."""

    lora_A: torch.Tensor  # r × n
    lora_core: torch.Tensor  # r × r
    lora_B: torch.Tensor  # m × r
    residual: bool = False


class CoreLinear(AdapterLinear):
    """A frozen ``nn.Linear`` plus s · B · N · A · drop(x).

    With ``residual`` the base weight holds W0 − s·B0·N0·A0 and B0, N0, A0 are kept as
    buffers, so ΔW relative to the ORIGINAL W0 is s·B·N·A − s·B0·N0·A0 (rank ≤ 2r).
    """

    def __init__(self, base_layer: nn.Linear, init: LayerInit, s: float, dropout: float):
        super().__init__(base_layer, dropout)
        self.scaling = float(s)
        self.r = int(init.lora_core.shape[0])
        device = base_layer.weight.device
        for name in FACTORS:
            value = getattr(init, name).detach().to(device=device, dtype=torch.float32)
            setattr(self, name, nn.Parameter(value.clone().contiguous(), requires_grad=False))
        self.residual = bool(init.residual)
        # The initial core (for ‖N − N0‖) and, with residual, the initial outer factors.
        self.register_buffer("core_init", self.lora_core.detach().clone(), persistent=False)
        if self.residual:
            self.register_buffer("init_A", self.lora_A.detach().clone(), persistent=False)
            self.register_buffer("init_B", self.lora_B.detach().clone(), persistent=False)
            with torch.no_grad():
                w = base_layer.weight.data
                w.copy_((w.float() - self.scaling * self.init_B @ self.core_init @ self.init_A).to(w.dtype))

    @property
    def weight(self) -> torch.Tensor:  # some model code reads .weight / .bias of its linears
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.to(self.lora_A.dtype)
        return F.linear(F.linear(F.linear(z, self.lora_A), self.lora_core), self.lora_B) * self.scaling

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact (B′, A′) with B′A′ = ΔW relative to the original W0 (rank r, or 2r with residual)."""
        with torch.no_grad():
            b = self.scaling * (self.lora_B.float() @ self.lora_core.float())
            a = self.lora_A.float()
            if self.residual:
                b0 = -self.scaling * (self.init_B.float() @ self.core_init.float())
                b, a = torch.cat([b, b0], dim=1), torch.cat([a, self.init_A.float()], dim=0)
        return b.detach().cpu().contiguous(), a.detach().cpu().contiguous()

    def delta_weight(self) -> torch.Tensor:
        """ΔW (out × in, fp32, CPU) that this layer adds to the original W0 at inference."""
        b, a = self.factors()
        return b @ a

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, residual={self.residual}"


def core_layers(model: nn.Module) -> dict[str, CoreLinear]:
    """{module name relative to the transformers model: wrapped layer}."""
    return adapter_layers(model, CoreLinear)


def module_rank(params: VariantParams, weight: torch.Tensor) -> int:
    """The rank used for one layer: r, clamped to min(m, n) so the r × r core fits small layers."""
    return min(int(params.r), *weight.shape)


class CoreMatrixVariant(Variant):
    """Base class of the B·N·A variants; subclasses implement :meth:`init_layer`.

    ``trainable`` names which factors get gradients (``lora_core`` only for XS/SB/IntTune).
    """

    trainable: ClassVar[tuple[str, ...]] = FACTORS
    Params = CoreParams

    def prepare(self, ctx: BuildContext, targets: dict[str, Any]) -> Any:
        """Data-driven work before any layer is initialised (LoRA-SB's gradients); default none."""
        return None

    def init_layer(self, name: str, weight: Any, rank: int, ctx: BuildContext, prepared: Any) -> LayerInit:
        """Initial B, N, A of the layer ``name`` with weight W0 (``weight``, m × n) at ``rank``."""
        raise NotImplementedError

    def build(self, ctx: BuildContext) -> Any:
        model = ctx.model
        targets = find_target_linears(model, ctx.target_modules)
        if not targets:
            raise ValueError(f"no linear layer matches target_modules {ctx.target_modules}")
        prepared = self.prepare(ctx, targets)
        s = scaling(self.params)
        clamped = []

        def make(name: str, linear: nn.Linear) -> CoreLinear:
            rank = module_rank(self.params, linear.weight)
            if rank < self.params.r:
                clamped.append(f"{name} ({rank})")
            with torch.no_grad():
                init = self.init_layer(name, linear.weight.detach(), rank, ctx, prepared)
            return CoreLinear(linear, init, s, self.params.lora_dropout)

        wrap_linears(model, ctx.target_modules, make)
        if clamped:
            ctx.log(f"{self.name}: rank clamped to the layer size for {len(clamped)} layers, e.g. {clamped[:3]}")
        # Freeze all but the trained factors and the task heads (XS/SB/IntTune train the core only).
        for param in model.parameters():
            param.requires_grad_(False)
        for layer in core_layers(model).values():
            for factor in self.trainable:
                getattr(layer, factor).requires_grad_(True)
        for head in ctx.modules_to_save:
            model.get_submodule(head).requires_grad_(True)
        return model

    # -- the contract and export ---------------------------------------------------------------

    def delta_weights(self, model: Any) -> dict[str, Any]:
        return {name: layer.delta_weight() for name, layer in core_layers(model).items()}

    def plain_lora_factors(self, model: Any) -> dict[str, tuple[Any, Any]] | None:
        return {name: layer.factors() for name, layer in core_layers(model).items()}

    def final_ranks(self, model: Any) -> dict[str, int]:
        return {name: layer.r * (2 if layer.residual else 1) for name, layer in core_layers(model).items()}

    # -- diagnostics (spec "Plot": ‖N − N0‖, singular values of the core) -------------------------

    def rank_extra(self, model: Any) -> dict[str, dict[str, float]]:
        """Per module: ‖core − core₀‖_F and the largest singular values of the core."""
        out = {}
        with torch.no_grad():
            for name, layer in core_layers(model).items():
                core = layer.lora_core.detach().float()
                values = {"core_drift": float(torch.linalg.norm(core - layer.core_init.float()))}
                for i, sv in enumerate(torch.linalg.svdvals(core.cpu())[:8].tolist()):
                    values[f"core_sv{i}"] = float(sv)
                out[name] = values
        return out

    # -- checkpoints ---------------------------------------------------------------------------------

    def state_dict_extra(self, model: Any) -> dict[str, Any]:
        """The frozen factors: a resume (or a native reload) then uses exactly the same A and B.

        They are recomputed deterministically by ``build``, but a data-driven init (LoRA-SB) on a
        GPU may differ in the sign of near-zero gradient entries; saving them removes the doubt.
        """
        state = {}
        for name, layer in core_layers(model).items():
            for factor in FACTORS:
                if factor not in self.trainable:
                    state[f"{name}.{factor}"] = getattr(layer, factor).detach().cpu()
        return state

    def load_state_dict_extra(self, model: Any, state: dict[str, Any]) -> None:
        layers = core_layers(model)
        with torch.no_grad():
            for key, value in state.items():
                name, _, factor = key.rpartition(".")
                if name in layers and factor in FACTORS:
                    target = getattr(layers[name], factor)
                    target.copy_(torch.as_tensor(value).to(device=target.device, dtype=target.dtype))


def kaiming_uniform(rows: int, cols: int, device: Any) -> torch.Tensor:
    """nn.Linear's default weight init (kaiming_uniform with a = √5) of a rows × cols matrix."""
    out = torch.empty(rows, cols, device=device, dtype=torch.float32)
    nn.init.kaiming_uniform_(out, a=math.sqrt(5))
    return out
