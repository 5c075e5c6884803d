"""DyLoRA (Valipour et al., 2023): one adapter trained to work at every rank 1..r_max (spec §1).

Each optimizer step draws a rank b uniformly from {r_min..r_max}; every adapted layer
then computes ``W0 x + (α/b) B[:, :b] A[:b] x``. In *frozen* mode (official default)
the first b−1 components take part in the forward pass but are detached, so only row
b−1 of A and column b−1 of B receive gradient; in *full* mode all b components do.
Because the official runs use AdamW with weight decay, components without gradient
still move through momentum and decay; ``strict_freeze`` undoes that (parameters and
Adam moments of those components are restored after the step).

At inference the adapter runs at one rank b* (``inference_rank``, default r_max): that
is what ``delta_weights`` and the exported plain LoRA contain. :func:`evaluate_over_ranks`
scores the trained adapter at several ranks; :meth:`DyLora.export_at_rank` writes a
plain LoRA for any rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from studio.variants._adapter_wrap import AdapterLinear, adapter_layers, set_trainable, wrap_linears
from studio.variants.base import (
    BuildContext,
    ExportContext,
    ExportReport,
    OptimConfig,
    Optimization,
    Paper,
    Variant,
    VariantParams,
    default_optimization,
)


class DyLoraParams(VariantParams):
    r: int = Field(8, ge=1, le=1024, description="Largest rank r_max; every rank 1..r_max is trained.")
    lora_alpha: float = Field(16.0, gt=0, le=8192, description="Scaling numerator: rank b is scaled by alpha / b.")
    lora_dropout: float = Field(0.0, ge=0.0, le=0.9, description="Dropout on the adapter input (official: 0).")
    r_min: int = Field(1, ge=1, le=1024, description="Smallest rank drawn during training.")
    mode: Literal["frozen", "full"] = Field(
        "frozen",
        description="frozen (official): only the newest component b gets gradient each step; "
        "full: all first b components are trained.",
    )
    strict_freeze: bool = Field(
        False,
        description="Keep components that got no gradient exactly unchanged (undo AdamW momentum and "
        "weight decay on them). Off reproduces the official runs.",
    )
    inference_rank: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Rank b* used for evaluation and for the saved adapter; empty = r_max.",
    )

    @model_validator(mode="after")
    def _ranks_fit(self) -> DyLoraParams:
        if self.r_min > self.r:
            raise ValueError(f"r_min ({self.r_min}) must not exceed r ({self.r})")
        if self.inference_rank is not None and self.inference_rank > self.r:
            raise ValueError(f"inference_rank ({self.inference_rank}) must not exceed r ({self.r})")
        return self


class DyLoraLinear(AdapterLinear):
    """``W0 x + (α/b) B[:, :b] A[:b] x`` with b = ``train_rank`` in training, ``eval_rank`` otherwise."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float, frozen: bool):
        super().__init__(base_layer, dropout)
        w = base_layer.weight
        self.r, self.alpha, self.frozen = r, float(alpha), frozen
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=w.device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=w.device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.train_rank = r
        self.eval_rank = r

    def active_rank(self) -> int:
        return self.train_rank if self.training else self.eval_rank

    def factors(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B[:, :b], A[:b]); in frozen training mode only component b−1 carries gradient."""
        a, bm = self.lora_A[:b], self.lora_B[:, :b]
        if self.frozen and self.training and b > 1:
            a = torch.cat([self.lora_A[: b - 1].detach(), self.lora_A[b - 1 : b]], dim=0)
            bm = torch.cat([self.lora_B[:, : b - 1].detach(), self.lora_B[:, b - 1 : b]], dim=1)
        return bm, a

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.active_rank()
        bm, a = self.factors(b)
        return (x.to(a.dtype) @ a.T) @ bm.T * (self.alpha / b)

    def delta_at(self, b: int) -> torch.Tensor:
        """ΔW at rank b: (α/b) B[:, :b] A[:b] (fp32, CPU)."""
        with torch.no_grad():
            return ((self.alpha / b) * (self.lora_B[:, :b] @ self.lora_A[:b])).float().cpu()

    def delta_weight(self) -> torch.Tensor:
        return self.delta_at(self.eval_rank)


def sample_rank(seed: int, step: int, r_min: int, r_max: int) -> int:
    """The rank b drawn for optimizer step ``step``: uniform on {r_min..r_max}.

    A function of (seed, step) only, so a resumed run draws exactly the same ranks.
    """
    gen = torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63 - 1))
    return r_min + int(torch.randint(0, r_max - r_min + 1, (1,), generator=gen))


def set_inference_rank(model: nn.Module, b: int) -> None:
    """Make every DyLoRA layer use rank ``b`` outside training (evaluation, ΔW, export)."""
    for layer in adapter_layers(model, DyLoraLinear).values():
        if not 1 <= b <= layer.r:
            raise ValueError(f"rank {b} is outside 1..{layer.r}")
        layer.eval_rank = b


def evaluate_over_ranks(model: nn.Module, eval_fn: Callable[[nn.Module], Any], ranks: Iterable[int]) -> dict[int, Any]:
    """{b: eval_fn(model)} with the adapter evaluated at each rank b (the "metric vs rank" curve).

    The model is put in eval mode for the calls; its previous inference rank and mode are restored.
    """
    layers = adapter_layers(model, DyLoraLinear)
    if not layers:
        raise ValueError("the model has no DyLoRA layers")
    before = {name: layer.eval_rank for name, layer in layers.items()}
    was_training = model.training
    results: dict[int, Any] = {}
    try:
        model.eval()
        for b in ranks:
            set_inference_rank(model, int(b))
            results[int(b)] = eval_fn(model)
    finally:
        for name, layer in layers.items():
            layer.eval_rank = before[name]
        model.train(was_training)
    return results


class DyLora(Variant):
    name = "dylora"
    title = "DyLoRA (every rank at once)"
    summary = "Trains one adapter that works at every rank from 1 to r, so the rank is chosen after training."
    description = (
        "Choosing the rank (the size) of an adapter usually means training several adapters and keeping "
        "the best. DyLoRA trains a single adapter whose pieces are ordered by importance: at every training "
        "step it picks a random size and trains the adapter cut to that size. Afterwards you can cut it to "
        "any size you like, check the quality at each size, and keep the smallest one that is good enough."
    )
    when_to_use = (
        "When you do not know which rank to use, or need the same adapter at several sizes. Official "
        "settings: r 8, alpha 16, query/value layers, no dropout, lr 4e-4, batch 16, warmup 6%, weight decay 0.1."
    )
    paper = Paper(
        "DyLoRA: Parameter-Efficient Tuning of Pretrained Models using Dynamic Search-Free Low Rank Adaptation",
        2023,
        "2210.07558",
    )
    Params = DyLoraParams
    changes_rank = True  # the sampled rank b is what the rank chart shows

    def __init__(self, params: DyLoraParams | None = None):
        super().__init__(params)
        self.seed = 0
        self.current_rank: int | None = None
        self._optimizers: list[Any] = []
        self._snapshot: list[tuple[Any, ...]] = []

    @property
    def inference_rank(self) -> int:
        return self.params.inference_rank or self.params.r

    # -- build and training ----------------------------------------------------------------------

    def build(self, ctx: BuildContext) -> Any:
        p = self.params
        self.seed = int(ctx.seed)

        def make(name: str, linear: nn.Linear) -> DyLoraLinear:
            return DyLoraLinear(linear, p.r, p.lora_alpha, p.lora_dropout, frozen=p.mode == "frozen")

        wrap_linears(ctx.model, ctx.target_modules, make)
        set_trainable(ctx.model, ctx.modules_to_save)
        set_inference_rank(ctx.model, self.inference_rank)
        return ctx.model

    def configure_optimization(self, model: Any, cfg: OptimConfig) -> Optimization | None:
        opt = default_optimization([q for q in model.parameters() if q.requires_grad], cfg)
        self._optimizers = opt.optimizers  # strict_freeze restores Adam moments of untouched components
        return opt

    def on_step_begin(self, model: Any, step: int) -> None:
        """Draw b for this optimizer step (kept for all of its gradient-accumulation micro-batches)."""
        b = sample_rank(self.seed, step, self.params.r_min, self.params.r)
        self.current_rank = b
        for layer in adapter_layers(model, DyLoraLinear).values():
            layer.train_rank = b

    def _untouched(self, layer: DyLoraLinear) -> list[int]:
        """Component indices that got no gradient this step."""
        b = layer.train_rank
        trained = [b - 1] if self.params.mode == "frozen" else list(range(b))
        return [i for i in range(layer.r) if i not in trained]

    def on_pre_optimizer_step(self, model: Any, step: int) -> None:
        if not self.params.strict_freeze:
            return
        self._snapshot = []
        for layer in adapter_layers(model, DyLoraLinear).values():
            idx = self._untouched(layer)
            if not idx:
                continue
            for param, dim in ((layer.lora_A, 0), (layer.lora_B, 1)):
                saved = {"param": param.detach().index_select(dim, torch.tensor(idx, device=param.device))}
                for opt in self._optimizers:
                    for key, value in opt.state.get(param, {}).items():
                        if torch.is_tensor(value) and value.shape == param.shape:
                            saved[key] = value.index_select(dim, torch.tensor(idx, device=value.device)).clone()
                self._snapshot.append((param, dim, idx, saved))

    def on_optimizer_step(self, model: Any, step: int) -> None:
        """strict_freeze: put back the components (values and Adam moments) that got no gradient."""
        if not self._snapshot:
            return
        with torch.no_grad():
            for param, dim, idx, saved in self._snapshot:
                index = torch.tensor(idx, device=param.device)
                param.index_copy_(dim, index, saved["param"])
                for opt in self._optimizers:
                    state = opt.state.get(param, {})
                    for key, value in saved.items():
                        if key != "param" and key in state:
                            state[key].index_copy_(dim, index, value)
        self._snapshot = []

    # -- rank log ------------------------------------------------------------------------------

    def rank_allocation(self, model: Any) -> dict[str, int]:
        """The rank b drawn for the latest step (the same for every module); b* before training."""
        b = self.current_rank or self.inference_rank
        return {name: b for name in adapter_layers(model, DyLoraLinear)}

    def rank_extra(self, model: Any) -> dict[str, dict[str, float]]:
        return {
            name: {"sampled_rank": float(self.current_rank or 0), "inference_rank": float(layer.eval_rank)}
            for name, layer in adapter_layers(model, DyLoraLinear).items()
        }

    def final_ranks(self, model: Any) -> dict[str, int]:
        return {name: layer.eval_rank for name, layer in adapter_layers(model, DyLoraLinear).items()}

    # -- contract and export -------------------------------------------------------------------

    def delta_weights(self, model: Any) -> dict[str, Any]:
        return {name: layer.delta_weight() for name, layer in adapter_layers(model, DyLoraLinear).items()}

    def plain_lora_factors(self, model: Any) -> dict[str, tuple[Any, Any]]:
        """Exact factors at the inference rank b*: B′ = (α/b*) B[:, :b*], A′ = A[:b*]."""
        out = {}
        for name, layer in adapter_layers(model, DyLoraLinear).items():
            b = layer.eval_rank
            with torch.no_grad():
                out[name] = (
                    (layer.lora_B[:, :b] * (layer.alpha / b)).float().cpu(),
                    layer.lora_A[:b].float().cpu(),
                )
        return out

    def export_at_rank(self, model: Any, out_dir: Path, ectx: ExportContext, b: int) -> ExportReport:
        """Write a plain PEFT LoRA of the adapter cut to rank ``b`` (exact)."""
        layers = adapter_layers(model, DyLoraLinear)
        before = {name: layer.eval_rank for name, layer in layers.items()}
        try:
            set_inference_rank(model, b)
            return self.export_plain_lora(model, Path(out_dir), ectx)
        finally:
            for name, layer in layers.items():
                layer.eval_rank = before[name]


VARIANT = DyLora


def cut_saved_adapter(source: Path, out: Path, rank: int) -> ExportReport:
    """Write the saved DyLoRA adapter at ``source`` cut, exactly, to ``rank`` into ``out``.

    DyLoRA is trained to work at every rank: cut its components, exactly, instead of an SVD.

    The saved adapter holds A' = A[:b*] and B' = (alpha/b*) B[:, :b*] (scale 1). At rank
    b <= b* DyLoRA computes (alpha/b) B[:, :b] A[:b], i.e. B'[:, :b] * b*/b with A'[:b].
    """
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from studio.errors import ValidationFailed

    config = json.loads((source / "adapter_config.json").read_text())
    tensors = load_file(str(source / "adapter_model.safetensors"))
    cut: dict[str, Any] = {}
    ranks: dict[str, int] = {}
    for key, value in tensors.items():
        if ".lora_A." not in key:
            if ".lora_B." not in key:
                cut[key] = value
            continue
        b_key = key.replace(".lora_A.", ".lora_B.")
        stored = value.shape[0]
        if rank > stored:
            raise ValidationFailed(f"this DyLoRA adapter was saved at rank {stored}; choose a rank up to {stored}")
        cut[key] = value[:rank].contiguous()
        cut[b_key] = (tensors[b_key][:, :rank] * (stored / rank)).contiguous()
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        ranks[module] = rank
    config.update(r=rank, lora_alpha=rank)
    config["rank_pattern"] = {name: rank for name in config.get("rank_pattern") or {}}
    config["alpha_pattern"] = {name: rank for name in config.get("alpha_pattern") or {}}
    out.mkdir(parents=True, exist_ok=True)
    save_file(cut, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    for extra in ("labels.json", "README.md", "reproducibility.json"):
        if (source / extra).exists():
            shutil.copy2(source / extra, out / extra)
    return ExportReport(path=str(out), ranks=ranks, format="dylora_at_rank", exact=True)
