"""ALLoRA (Huang & Balestriero, 2024): LoRA without dropout or scaling, with a norm-adaptive step (spec §4).

``h = W0 x + B A x`` (alpha = r, dropout 0), LoRA's init. For each parameter vector θ_j
(each row of A and of B by default; or each column, or each whole tensor) the optimizer's
update is multiplied by ``c_j = 1 / sqrt(‖θ_j‖² + 1/η²)``, ‖θ_j‖ taken before the step:

    θ_j ← θ_j − lr · c_j · u_j

where ``lr · u_j`` is what the optimizer (AdamW, weight decay included) would have moved θ_j.
The multiplier is applied *after* the optimizer step, not to the gradient before it: Adam
normalises gradient scale away, so a gradient multiplier would have (almost) no effect.
At θ = 0 the multiplier is η; for large norms it tends to 1/‖θ_j‖.

**[verify]** The spec rests on the paper's abstract: the granularity (rows by default) and
the placement after Adam are the spec's reading, the default η = 1 is ours — tune η on a grid.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from studio.variants.base import BuildContext, Paper, VariantParams
from studio.variants.peft_common import PeftVariant, tuner_layers


class AlloraParams(VariantParams):
    lora_alpha: float | None = Field(
        None, description="ALLoRA has no scaling factor: alpha is fixed to r (leave empty)."
    )
    lora_dropout: float = Field(0.0, ge=0.0, le=0.0, description="ALLoRA uses no dropout (fixed at 0).")
    eta: float = Field(
        1.0,
        gt=0.0,
        le=1e6,
        description="η: the step multiplier at zero norm (the largest it can be); tune on a grid, e.g. 0.25..16.",
    )
    granularity: Literal["row", "column", "tensor"] = Field(
        "row",
        description="Which parameter vectors get their own multiplier: each row of A and B (default), "
        "each column, or each whole matrix.",
    )

    @model_validator(mode="after")
    def _no_scaling(self) -> AlloraParams:
        if self.lora_alpha is None:
            self.lora_alpha = float(self.r)
        elif self.lora_alpha != self.r:
            raise ValueError(f"ALLoRA has no scaling: lora_alpha must equal r ({self.r}) or be left empty")
        return self


def norm_multiplier(theta: torch.Tensor, eta: float, granularity: str) -> torch.Tensor:
    """c = 1/sqrt(‖θ_j‖² + 1/η²) per row / column / tensor of a 2-D ``theta``, shaped to broadcast on it."""
    t = theta.detach().float()
    if granularity == "row":
        sq = t.pow(2).sum(dim=1, keepdim=True)
    elif granularity == "column":
        sq = t.pow(2).sum(dim=0, keepdim=True)
    elif granularity == "tensor":
        sq = t.pow(2).sum().reshape(1, 1)
    else:
        raise ValueError(f"unknown granularity {granularity!r}")
    return torch.rsqrt(sq + 1.0 / (eta * eta))


def lora_matrices(model: Any) -> dict[str, dict[str, torch.nn.Parameter]]:
    """{module name: {"A": lora_A weight, "B": lora_B weight}} of every adapted module."""
    return {
        name: {"A": layer.lora_A["default"].weight, "B": layer.lora_B["default"].weight}
        for name, layer in tuner_layers(model).items()
    }


class Allora(PeftVariant):
    name = "allora"
    title = "ALLoRA (adaptive step)"
    summary = "LoRA without dropout or scaling; each row's step shrinks as its weights grow."
    description = (
        "A simplification of LoRA for short fine-tuning runs. It removes two settings of LoRA (dropout and "
        "the scaling factor) and instead adapts the learning speed of each small group of adapter weights: "
        "weights that are still near zero move quickly, so the adapter gets going faster, and weights that "
        "have grown large move more carefully."
    )
    when_to_use = "Short fine-tuning runs with little data, where LoRA starts slowly. Tune eta (η) on a small grid."
    paper = Paper("ALLoRA: Adaptive Learning Rate Mitigates LoRA Fatal Flaws", 2024, "2410.09692")
    Params = AlloraParams

    def __init__(self, params: AlloraParams | None = None):
        super().__init__(params)
        self._before: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []
        self._mean_c: dict[str, dict[str, float]] = {}

    def peft_config(self, ctx: BuildContext) -> Any:
        p = self.params
        return self.lora_config(ctx, lora_alpha=float(p.r), lora_dropout=0.0)

    def on_pre_optimizer_step(self, model: Any, step: int) -> None:
        """Remember θ and its multiplier c (from the norm before the update)."""
        p = self.params
        self._before = []
        for name, mats in lora_matrices(model).items():
            stats = {}
            for key, param in mats.items():
                if not param.requires_grad:
                    continue
                c = norm_multiplier(param, p.eta, p.granularity)
                self._before.append((param, param.detach().clone(), c))
                stats[f"mean_c_{key}"] = float(c.mean())
            self._mean_c[name] = stats

    def on_optimizer_step(self, model: Any, step: int) -> None:
        """θ ← θ_old + c · (θ_optimizer − θ_old): the optimizer's own step, scaled per vector."""
        with torch.no_grad():
            for param, old, c in self._before:
                step_taken = param.detach().float() - old.float()
                param.copy_((old.float() + c * step_taken).to(param.dtype))
        self._before = []

    def rank_extra(self, model: Any) -> dict[str, dict[str, float]]:
        """Mean multiplier c of A and B and ‖B‖_F per module (ALLoRA's charts)."""
        out = {}
        for name, mats in lora_matrices(model).items():
            out[name] = {**self._mean_c.get(name, {}), "b_norm": float(mats["B"].detach().norm())}
        return out


VARIANT = Allora
