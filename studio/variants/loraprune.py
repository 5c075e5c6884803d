"""LoRAPrune (Zhang et al., 2023): structured pruning guided by LoRA gradients (spec §9).

Standard LoRA on the decoder projections plus binary output masks: q/k/v share one mask
per attention group and layer (for grouped-query attention a group is a KV head with its
query heads, so the pruned model stays a valid GQA model), gate/up share one mask per MLP
channel; o/down are not masked (their pruned inputs are already zero). Every optimizer step
(after clipping, before the step) the importance ``|Ĝ ⊙ (W0 + sBA)|`` with
``Ĝ = ∇B·A + B·∇A − ∇B·∇A`` is summed into groups, L2-normalised per module, added across
the modules of a group and smoothed (Ī ← 0.9 Ī + 0.1 I; a step with NaN is skipped). A cubic
schedule sets the sparsity; every 10 steps each prunable layer keeps only its best groups
(the first int(0.1·L) layers and the last are never pruned); a final prune lands exactly on
the target. Follows the official code (aim-uofa/LoRAPrune).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from studio.variants import _loraprune_masks as lp
from studio.variants._adapter_wrap import AdapterLinear
from studio.variants._loraprune_pruned import save_pruned_model
from studio.variants.base import BuildContext, ExportContext, ExportReport, Paper, Variant, VariantParams
from studio.variants.lora_export import export_delta_as_lora, trained_head_state
from studio.variants.targets import find_target_linears

MASKS_NAME = "loraprune_masks"  # the group masks live once, on the root model, as buffers


class LoraPruneParams(VariantParams):
    target_sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="p_f: share of heads / channels pruned at the end.")
    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="p₀: sparsity during the initial warmup.")
    initial_warmup: float = Field(0.1, ge=0.0, le=1.0, description="w_i: share of the run before pruning starts.")
    final_warmup: float = Field(0.1, ge=0.0, le=1.0, description="w_f: share of the run kept at the target sparsity.")
    prune_every: int = Field(10, ge=1, le=100000, description="Steps between pruning rounds (official 10).")
    importance_beta: float = Field(0.9, ge=0.0, lt=1.0, description="EMA factor of the importance (official 0.9).")
    final_prune: bool = Field(
        True,
        description="Prune once more at exactly p_f when the schedule reaches it (or at the last step); the "
        "official code stops just below p_f.",
    )
    adapter_format: Literal["lora_and_masks", "exact_lora"] = Field(
        "lora_and_masks",
        description="lora_and_masks: the rank-r LoRA + pruning_masks.safetensors (the model card shows how to "
        "apply the masks; the physically pruned model is one export away); exact_lora: a plain PEFT LoRA that "
        "also removes the pruned rows (rank r + pruned rows, near dense; exact for bias-free layers).",
    )
    save_merged: bool = Field(
        False, description="Also save a merged dense model with the pruned rows zeroed (merged/)."
    )
    save_pruned: bool = Field(
        False,
        description="Also save the physically pruned model (pruned/): heads and channels removed, LoRA merged in.",
    )

    @model_validator(mode="after")
    def _warmups_fit(self) -> LoraPruneParams:
        if self.initial_warmup + self.final_warmup >= 1.0:
            raise ValueError("initial_warmup + final_warmup must be below 1")
        return self


class PruneMasks(nn.Module):
    """Group masks as buffers: ``attn_<i>`` (KV groups) and ``mlp_<i>`` (channels) of decoder layer i."""

    def __init__(self, layers: list[lp.DecoderLayer], device: Any):
        super().__init__()
        for layer in layers:
            self.register_buffer(f"attn_{layer.index}", torch.ones(layer.num_kv_heads, device=device))
            self.register_buffer(f"mlp_{layer.index}", torch.ones(layer.intermediate, device=device))


class PruneLoraLinear(AdapterLinear):
    """A frozen linear, an optional LoRA (r > 0) and an optional output-row mask."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float, key: str | None, repeat: int):
        super().__init__(base_layer, dropout)
        self.r, self.scaling = r, (alpha / r if r > 0 else 0.0)
        self.key, self.repeat = key, repeat
        self._masks: list[PruneMasks] = []  # plain list: the masks module is registered on the root only
        if r > 0:
            w = base_layer.weight
            self.lora_A = nn.Parameter(torch.empty(r, w.shape[1], device=w.device))
            self.lora_B = nn.Parameter(torch.zeros(w.shape[0], r, device=w.device))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def row_mask(self) -> torch.Tensor | None:
        if self.key is None:
            return None
        return self._masks[0].get_buffer(self.key).repeat_interleave(self.repeat)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.lora_A.dtype) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.r > 0:
            out = out + self.adapter_forward(self.dropout(x)).to(out.dtype)
        mask = self.row_mask()
        return out if mask is None else out * mask.to(out.dtype)

    def lora_delta(self) -> torch.Tensor:
        w = self.base_layer.weight
        if self.r == 0:
            return torch.zeros(w.shape, device=w.device, dtype=torch.float32)
        return (self.lora_B @ self.lora_A) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """diag(mask)(W0 + sBA) − W0: the rows of pruned outputs cancel W0."""
        with torch.no_grad():
            delta = self.lora_delta().float()
            mask = self.row_mask()
            if mask is not None:
                w0 = self.base_layer.weight.float()
                delta = mask[:, None] * (w0 + delta) - w0
            return delta.cpu()

    def exact_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B′, A′) with B′A′ = delta_weight: [mask·sB, −I_pruned] · [A; W0[pruned]]."""
        with torch.no_grad():
            w0 = self.base_layer.weight.float()
            mask = self.row_mask()
            keep = torch.ones(w0.shape[0], device=w0.device) if mask is None else mask.float()
            bs, as_ = [], []
            if self.r > 0:
                bs.append(self.lora_B.float() * self.scaling * keep[:, None])
                as_.append(self.lora_A.float())
            pruned = (keep == 0).nonzero().flatten()
            if pruned.numel():
                eye = torch.zeros(w0.shape[0], pruned.numel(), device=w0.device)
                eye[pruned, torch.arange(pruned.numel(), device=w0.device)] = -1.0
                bs.append(eye)
                as_.append(w0[pruned])
            if not bs:
                return w0.new_zeros(w0.shape[0], 0).cpu(), w0.new_zeros(0, w0.shape[1]).cpu()
            return torch.cat(bs, 1).cpu(), torch.cat(as_, 0).cpu()


class LoraPrune(Variant):
    name = "loraprune"
    title = "LoRAPrune"
    summary = "Train a LoRA and, at the same time, cut away the attention heads and MLP channels that matter least."
    description = (
        "LoRAPrune fine-tunes a small LoRA adapter and uses its training signal to judge which parts of the "
        "model (whole attention heads and feed-forward channels) contribute least. Step by step it switches "
        "those parts off until the chosen share is gone. The result is a smaller, faster model adapted to your "
        "data, without ever computing gradients of the big frozen weights."
    )
    when_to_use = (
        "When the deliverable must be smaller or faster than the base model (structured compression, e.g. 50% of "
        "heads and channels) and you can accept some quality loss; Llama-style decoders only."
    )
    paper = Paper("LoRAPrune: Structured Pruning Meets Low-Rank Parameter-Efficient Fine-Tuning", 2023, "2305.18403")
    Params = LoraPruneParams
    changes_rank = True
    export_exact = False  # exact for bias-free layers only, and the pruned rows make the LoRA large

    def __init__(self, params: VariantParams | None = None):
        super().__init__(params)
        self.layers: dict[str, PruneLoraLinear] = {}
        self.decoder: list[lp.DecoderLayer] = []
        self.masks: PruneMasks | None = None
        self.ema: dict[str, torch.Tensor] = {}  # "attn_<i>" / "mlp_<i>" of prunable layers
        self.total_steps = 1
        self.final_done = False
        self.ratio = 0.0

    # -- build ---------------------------------------------------------------------------------

    def build(self, ctx: BuildContext) -> Any:
        p = self.params
        model = ctx.model
        for param in model.parameters():
            param.requires_grad_(False)
        self.decoder = lp.decoder_layers(model)
        self.total_steps = max(1, int(ctx.total_steps))
        device = next(model.parameters()).device
        self.masks = PruneMasks(self.decoder, device)
        model.add_module(MASKS_NAME, self.masks)
        targets = find_target_linears(model, ctx.target_modules)
        masked: dict[str, tuple[str, int]] = {}
        for layer in self.decoder:
            for block, projs in (("self_attn", lp.ATTN), ("mlp", lp.MLP)):
                for proj in projs:
                    repeat = lp.row_repeat(proj, layer)
                    if repeat:
                        key = f"{'attn' if block == 'self_attn' else 'mlp'}_{layer.index}"
                        masked[layer.name(block, proj)] = (key, repeat)
        for name, module in list(model.named_modules()):  # named_modules order: reproducible inits
            if name not in targets and name not in masked:
                continue
            key, repeat = masked.get(name, (None, 0))
            r = p.r if name in targets else 0
            wrapper = PruneLoraLinear(module, r, p.lora_alpha, p.lora_dropout, key, repeat)
            wrapper._masks.append(self.masks)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, wrapper)
            self.layers[name] = wrapper
        for wrapper in self.layers.values():
            if wrapper.r > 0:
                wrapper.lora_A.requires_grad_(True)
                wrapper.lora_B.requires_grad_(True)
        for head in ctx.modules_to_save:
            model.get_submodule(head).requires_grad_(True)
        n = len(self.decoder)
        self.ema = {}
        for layer in self.decoder:
            if lp.prunable(layer.index, n):
                self.ema[f"attn_{layer.index}"] = torch.zeros(layer.num_kv_heads, device=device)
                self.ema[f"mlp_{layer.index}"] = torch.zeros(layer.intermediate, device=device)
        return model

    # -- importance and pruning ------------------------------------------------------------------------

    def step_importance(self) -> dict[str, torch.Tensor] | None:
        """This step's normalised group importance per prunable layer, or None without gradients."""
        scores: dict[str, torch.Tensor] = {}
        for layer in self.decoder:
            if f"attn_{layer.index}" not in self.ema:
                continue
            for block, projs in (("self_attn", lp.ATTN), ("mlp", lp.MLP)):
                key = f"{'attn' if block == 'self_attn' else 'mlp'}_{layer.index}"
                total = torch.zeros_like(self.ema[key])
                for proj in projs:
                    module = self.layers.get(layer.name(block, proj))
                    if module is None or module.r == 0 or module.lora_A.grad is None or module.lora_B.grad is None:
                        continue
                    with torch.no_grad():
                        a, b = module.lora_A.float(), module.lora_B.float()
                        g_hat = lp.lora_grad_estimate(a, b, module.lora_A.grad.float(), module.lora_B.grad.float())
                        weight = module.base_layer.weight.float() + (b @ a) * module.scaling
                        vec = lp.group_scores((g_hat * weight).abs(), proj, layer)
                        total += vec / (torch.linalg.norm(vec) + 1e-8)
                scores[key] = total
        return scores

    def update_importance(self) -> bool:
        """Ī ← β Ī + (1 − β) I; the whole update is skipped when any score is NaN (official). True if applied."""
        scores = self.step_importance()
        if not scores or any(bool(torch.isnan(v).any()) for v in scores.values()):
            return False
        beta = self.params.importance_beta
        for key, value in scores.items():
            self.ema[key] = self.ema[key] * beta + value * (1 - beta)
        return True

    def prune(self, ratio: float) -> None:
        """Every prunable layer keeps the best groups so that ⌊ratio·G⌋ are pruned (never fewer than before)."""
        for key, score in self.ema.items():
            mask = self.masks.get_buffer(key)
            if float(1 - mask.mean()) >= self.params.target_sparsity:
                continue  # already at the target (official check)
            mask.copy_(lp.select_pruned(score, mask, ratio))

    def sparsity(self, step: int) -> float:
        p = self.params
        return lp.sparsity_at(
            step, self.total_steps, p.initial_sparsity, p.target_sparsity, p.initial_warmup, p.final_warmup
        )

    def on_pre_optimizer_step(self, model: Any, step: int) -> None:
        p = self.params
        done = step - 1  # the official schedule uses the 0-based global step before it is incremented
        self.update_importance()
        self.ratio = self.sparsity(done)
        if done % p.prune_every == 0 and p.initial_sparsity < self.ratio < p.target_sparsity:
            self.prune(self.ratio)
        if p.final_prune and not self.final_done and (self.ratio >= p.target_sparsity or step >= self.total_steps):
            self.prune(p.target_sparsity)
            self.final_done = True

    # -- rank log ------------------------------------------------------------------------------------

    def rank_allocation(self, model: Any) -> dict[str, int]:
        """Remaining query heads and MLP channels per layer."""
        out = {}
        for layer in self.decoder:
            attn = self.masks.get_buffer(f"attn_{layer.index}")
            out[f"{layer.prefix}.self_attn"] = int(attn.sum()) * layer.rep
            out[f"{layer.prefix}.mlp"] = int(self.masks.get_buffer(f"mlp_{layer.index}").sum())
        return out

    def rank_extra(self, model: Any) -> dict[str, dict[str, float]]:
        out = {}
        for layer in self.decoder:
            for block, key in (("self_attn", f"attn_{layer.index}"), ("mlp", f"mlp_{layer.index}")):
                mask = self.masks.get_buffer(key)
                out[f"{layer.prefix}.{block}"] = {
                    "sparsity": float(1 - mask.mean()),
                    "target_sparsity": float(self.ratio),
                    "prunable": float(key in self.ema),
                }
        return out

    def final_ranks(self, model: Any) -> dict[str, int]:
        return {name: int(layer.r) for name, layer in self.layers.items() if layer.r > 0}

    # -- checkpoints ------------------------------------------------------------------------------------

    def state_dict_extra(self, model: Any) -> dict[str, Any]:
        state: dict[str, Any] = {"final_done": self.final_done, "ratio": self.ratio}
        for key, mask in self.masks.named_buffers():
            state[f"mask::{key}"] = mask.detach().cpu()
        for key, value in self.ema.items():
            state[f"ema::{key}"] = value.detach().cpu()
        return state

    def load_state_dict_extra(self, model: Any, state: dict[str, Any]) -> None:
        self.final_done = bool(state["final_done"])
        self.ratio = float(state["ratio"])
        for key, value in state.items():
            if key.startswith("mask::"):
                self.masks.get_buffer(key.removeprefix("mask::")).copy_(value)
            elif key.startswith("ema::"):
                name = key.removeprefix("ema::")
                self.ema[name] = value.to(self.ema[name].device).clone()

    # -- the contract and export -----------------------------------------------------------------------

    def delta_weights(self, model: Any) -> dict[str, Any]:
        return {name: layer.delta_weight() for name, layer in self.layers.items()}

    def plain_lora_factors(self, model: Any) -> dict[str, tuple[Any, Any]]:
        return {name: layer.exact_factors() for name, layer in self.layers.items()}

    def row_masks(self) -> dict[str, torch.Tensor]:
        """{module name: row mask} of every masked module (1 = kept output row)."""
        return {name: layer.row_mask().detach().cpu() for name, layer in self.layers.items() if layer.key}

    def lora_factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The rank-r LoRA alone (s·B, A), without the masks."""
        with torch.no_grad():
            return {
                name: ((layer.lora_B * layer.scaling).float().cpu(), layer.lora_A.float().cpu())
                for name, layer in self.layers.items()
                if layer.r > 0
            }

    def save_native(self, model: Any, out_dir: Path) -> None:
        """Trainable tensors + state (base format) plus ``pruning_masks.safetensors`` (row masks by module)."""
        from safetensors.torch import save_file

        super().save_native(model, out_dir)
        save_file({k: v.contiguous() for k, v in self.row_masks().items()}, str(Path(out_dir) / lp.MASKS_FILE))

    def save_adapter(self, model: Any, out_dir: Path, ectx: ExportContext) -> ExportReport:
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        if self.params.adapter_format == "exact_lora":
            lossy = [
                n for n, m in self.row_masks().items() if self.layers[n].base_layer.bias is not None and m.min() == 0
            ]
            if lossy:
                ectx.log(f"LoRAPrune: a LoRA cannot zero biases; load with load_pruned_adapter for {lossy[:3]}...")
            report = self.export_plain_lora(model, out_dir, ectx)
        else:
            report = export_delta_as_lora(model, out_dir, ectx, factors=self.lora_factors())
            report.exact, report.format = False, "peft-lora+pruning-masks"
        self.save_native(model, out_dir / "native")
        save_file({k: v.contiguous() for k, v in self.row_masks().items()}, str(out_dir / lp.MASKS_FILE))
        (out_dir / "loraprune.json").write_text(
            json.dumps(
                {
                    "adapter_format": self.params.adapter_format,
                    "masks": lp.MASKS_FILE,
                    "loader": "studio.variants._loraprune_masks.load_pruned_adapter(base_model, adapter_dir)",
                    "remaining": self.rank_allocation(model),
                },
                indent=2,
            )
        )
        if self.params.save_merged:
            self.save_merged(model, out_dir / "merged", ectx)
        if self.params.save_pruned:
            save_pruned_model(self.dense_merged(model, ectx), self.row_masks(), out_dir / "pruned", ectx.task)
        return report

    def dense_merged(self, model: Any, ectx: ExportContext) -> Any:
        """A fresh base with W0 + ΔW (pruned rows cancelled) and the trained heads: what the masked model computes."""
        base = ectx.fresh_base()
        deltas = self.delta_weights(model)
        with torch.no_grad():
            for name, delta in deltas.items():
                linear = base.get_submodule(name)
                linear.weight.add_(delta.to(linear.weight.dtype))
            for head in ectx.modules_to_save:
                base.get_submodule(head).load_state_dict(trained_head_state(model, head))
        return base

    def save_merged(self, model: Any, out_dir: Path, ectx: ExportContext) -> None:
        """A dense transformers model: W0 + ΔW with the pruned rows (and their biases) zeroed."""
        base = self.dense_merged(model, ectx)
        lp.zero_pruned_rows(base, self.row_masks())
        base.save_pretrained(str(out_dir), safe_serialization=True)

    def load_saved_adapter(self, base_model: Any, adapter_dir: Path) -> Any:
        """The PEFT model with the saved masks applied (base rows, biases and lora_B rows zeroed)."""
        return lp.load_pruned_adapter(base_model, adapter_dir, merge=False)

    def model_card_loading(self) -> list[str]:
        """How to load this adapter without the studio, for the format it was written in."""
        return lp.model_card_loading(self.params.adapter_format)


VARIANT = LoraPrune
