"""AdaLoRA (Zhang et al., 2023): SVD-shaped adapters whose ranks are re-allocated by importance.

PEFT implements the layers and the budget schedule; the engine calls
``update_and_allocate(step)`` after each optimizer step (before zero_grad). The
orthogonality regulariser PEFT adds only when the model computes the loss itself,
so it is added here through ``extra_loss`` with PEFT's formula.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from studio.variants.base import BuildContext, Paper, VariantParams
from studio.variants.peft_common import PeftVariant, peft_root, tuner_layers


class AdaLoraParams(VariantParams):
    r: int = Field(8, ge=1, le=1024, description="Not used by AdaLoRA: see init_r and target_r.")
    init_r: int = Field(12, ge=1, le=1024, description="Rank every module starts with.")
    target_r: int = Field(8, ge=1, le=1024, description="Average rank per module after pruning (the budget).")
    tinit_ratio: float = Field(0.1, ge=0.0, le=0.9, description="Share of steps trained before pruning starts.")
    tfinal_ratio: float = Field(0.2, ge=0.0, le=0.9, description="Share of final steps trained at the final ranks.")
    delta_t: int = Field(10, ge=1, le=10_000, description="Re-allocate ranks every this many steps.")
    beta1: float = Field(0.85, ge=0.0, lt=1.0, description="Smoothing of the importance scores.")
    beta2: float = Field(0.85, ge=0.0, lt=1.0, description="Smoothing of the importance uncertainty.")
    orth_reg_weight: float = Field(0.5, ge=0.0, le=10.0, description="Weight of the orthogonality regulariser.")


class AdaLora(PeftVariant):
    name = "adalora"
    title = "AdaLoRA (adaptive ranks)"
    summary = "Starts every layer at the same rank and moves rank to where it matters most during training."
    description = (
        "Not every layer needs the same capacity. AdaLoRA gives each adapted layer a few extra rank "
        "components at the start, measures during training which components matter, and switches the "
        "unimportant ones off until the average rank reaches your budget. The chart shows where the "
        "capacity ended up."
    )
    when_to_use = "When you have a fixed parameter budget and want it spent on the layers that need it."
    paper = Paper("AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", 2023, "2303.10512")
    Params = AdaLoraParams
    changes_rank = True

    def peft_config(self, ctx: BuildContext) -> Any:
        from peft import AdaLoraConfig

        p = self.params
        total = max(1, ctx.total_steps)
        tinit = int(p.tinit_ratio * total)
        tfinal = int(p.tfinal_ratio * total)
        if tinit >= total - tfinal:  # PEFT needs a budgeting phase; short runs shrink the warm phases
            tinit, tfinal = 0, 0
        return AdaLoraConfig(
            init_r=p.init_r,
            target_r=min(p.target_r, p.init_r),
            tinit=tinit,
            tfinal=tfinal,
            deltaT=p.delta_t,
            beta1=p.beta1,
            beta2=p.beta2,
            orth_reg_weight=p.orth_reg_weight,
            total_step=total,
            lora_alpha=p.lora_alpha,
            lora_dropout=p.lora_dropout,
            target_modules=list(ctx.target_modules),
            modules_to_save=list(ctx.modules_to_save) or None,
            task_type=ctx.peft_task_type,
        )

    def extra_loss(self, model: Any) -> Any | None:
        """PEFT's orthogonality penalty: mean over A and B of ‖PPᵀ − I‖_F (AᵀA / BᵀB)."""
        import torch

        weight = self.params.orth_reg_weight
        if weight == 0:
            return None
        terms = []
        for name, p in peft_root(model).named_parameters():
            if ("lora_A" in name or "lora_B" in name) and "default" in name:
                cov = p @ p.T if "lora_A" in name else p.T @ p
                eye = torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)
                terms.append(torch.linalg.matrix_norm(cov - eye))
        return weight * torch.stack(terms).mean() if terms else None

    def on_optimizer_step(self, model: Any, step: int) -> None:
        model.base_model.update_and_allocate(step)

    def _pattern(self, model: Any) -> dict[str, list[bool]] | None:
        return model.peft_config["default"].rank_pattern

    def rank_allocation(self, model: Any) -> dict[str, int]:
        pattern = self._pattern(model) or {}
        ranks = {}
        for name, layer in tuner_layers(model).items():
            mask = pattern.get(f"{name}.lora_E.default", pattern.get(f"{name}.lora_E"))
            ranks[name] = int(sum(mask)) if mask is not None else int(layer.r["default"])
        return ranks

    def final_ranks(self, model: Any) -> dict[str, int]:
        return self.rank_allocation(model)

    def plain_lora_factors(self, model: Any) -> dict[str, tuple[Any, Any]]:
        """Kept components only: A′ = (A ⊙ E)[kept], B′ = B[:, kept] · α/(ranknum + 1e-5)."""
        import torch

        factors = {}
        with torch.no_grad():
            for name, layer in tuner_layers(model).items():
                e = layer.lora_E["default"].view(-1)
                keep = (e != 0).nonzero().view(-1)
                scale = layer.scaling["default"] / (float(layer.ranknum["default"]) + 1e-5)
                a = (layer.lora_A["default"] * layer.lora_E["default"])[keep].float()
                b = layer.lora_B["default"][:, keep].float() * scale
                factors[name] = (b.cpu(), a.cpu())
        return factors

    # The allocator's running importance scores are part of the training state.
    def state_dict_extra(self, model: Any) -> dict[str, Any]:
        allocator = model.base_model.rankallocator
        state: dict[str, Any] = {"rank_pattern": self._pattern(model)}
        for kind in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            for key, tensor in getattr(allocator, kind).items():
                state[f"{kind}|{key}"] = tensor
        return state

    def load_state_dict_extra(self, model: Any, state: dict[str, Any]) -> None:
        allocator = model.base_model.rankallocator
        model.peft_config["default"].rank_pattern = state.get("rank_pattern")
        for key, value in state.items():
            if "|" in key:
                kind, name = key.split("|", 1)
                getattr(allocator, kind)[name] = value.to(next(model.parameters()).device)


VARIANT = AdaLora
