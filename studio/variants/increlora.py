"""IncreLoRA (Zhang et al., 2023): start at rank 1 and grow ranks where they matter (spec §3).

Every adapted linear keeps rank-1 components (a_i, b_i, e_i) in chunks and adds
``ΔW = α/(k + 1e-5) · Σ_i e_i b_i a_iᵀ`` over all stored components, k = active count.
Reserve components ("advance learning") train a_i, b_i while e_i stays fixed at 1e-5;
an allocation activates them (e_i becomes trainable) on the highest-scoring modules and
appends fresh reserves. Follows the official code (FeiyuZhang98/IncreLoRA, loralib +
NLU trainer): allocator called after clipping and before the optimizer step with the
0-based global step, new parameters in new optimizer groups with their own
warmup-then-linear-decay that ends with the run.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from studio.variants._adapter_wrap import wrap_linears
from studio.variants._increlora_parts import GrowingLR, IncreLoraLinear
from studio.variants.base import BuildContext, OptimConfig, Optimization, Paper, Variant, VariantParams

RANK_STEP = {2: 1, 4: 2, 6: 3, 8: 4}  # official n_add per average target rank
RESERVE_E = 1e-5  # "advance learning": reserves contribute a tiny, fixed amount
OFFICIAL_INTERVAL = 1000  # official init_warmup and incre_interval (DeBERTaV3-base GLUE scripts)
WARMUP_SHARE = 0.1  # scaled init_warmup: this share of the run
SPEND_BY = 0.7  # scaled incre_interval: the budget is spent by this share of the run


def allocations_needed(start_rank: int, target_rank: int, n_add: int, top_h: int, modules: int) -> int:
    """Allocation rounds that spend the budget when each round grows min(top_h, modules) modules by n_add."""
    per_round = max(1, min(top_h, modules) * n_add)
    return max(1, math.ceil(max(0, target_rank - start_rank) / per_round))


def scaled_schedule(total_steps: int, rounds: int) -> tuple[int, int]:
    """(init_warmup, incre_interval) for a run of ``total_steps`` that needs ``rounds`` allocations.

    The official 1000 / 1000 assume tens of thousands of steps; a run under about 1000 steps would never
    allocate and stay a rank-1 LoRA. Scaled: warm up for a tenth of the run, then space the rounds so the
    last one lands by 70% of it (the new ranks still get trained). Each is capped at the official value,
    so a long enough run uses exactly the official schedule.
    """
    total = max(1, int(total_steps))
    warmup = min(OFFICIAL_INTERVAL, int(total * WARMUP_SHARE))
    interval = min(OFFICIAL_INTERVAL, max(1, int((total * SPEND_BY - warmup) // max(1, rounds))))
    return warmup, interval


class IncreLoraParams(VariantParams):
    r: int = Field(1, ge=1, le=64, description="Initial rank of every module (official lora_r = 1).")
    lora_alpha: float = Field(16.0, gt=0, le=8192, description="α: the update is scaled by α/(k + 1e-5), k = rank.")
    avg_target_rank: int = Field(
        2,
        ge=1,
        le=256,
        description="Average final rank per module: budget = this × number of modules (official 2 or 8).",
    )
    incre_rank_num: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Components added per selected module (n_add); empty = official table {2:1, 4:2, 6:3, 8:4}.",
    )
    top_h: int = Field(5, ge=1, le=1000, description="Modules selected per allocation.")
    init_warmup: int | None = Field(
        None,
        ge=0,
        description="Steps before the first allocation. Empty = scaled to the run: min(1000, total steps / 10) "
        "(official 1000, kept for runs of 10,000 steps or more).",
    )
    incre_interval: int | None = Field(
        None,
        ge=1,
        description="Steps between allocations. Empty = scaled to the run so that the budget is spent by 70% of "
        "it: min(1000, (0.7·total steps − init_warmup) / allocations needed), at least 1 (official 1000, kept "
        "when the run is long enough for it).",
    )
    beta1: float = Field(0.85, gt=0, lt=1, description="EMA factor of the importance Ī.")
    beta2: float = Field(0.85, gt=0, lt=1, description="EMA factor of the uncertainty Ū.")
    orth_reg_weight: float = Field(0.1, ge=0, le=10, description="γ of the orthogonality regulariser.")
    orth_form: Literal["paper", "official"] = Field(
        "paper",
        description="paper: mean over the factor matrices of ‖AAᵀ−I‖_F and ‖BᵀB−I‖_F; official: loralib's "
        "compute_orth_regu, which only pushes each vector a_i, b_i to unit norm.",
    )
    advance_learning: bool = Field(
        True, description="Train reserve a_i, b_i (with e_i fixed at 1e-5) before they are activated."
    )
    clamp_overshoot: bool = Field(
        False,
        description="Never select more modules than the remaining budget needs (the official check can overshoot "
        "the budget by up to (top_h−1)·n_add).",
    )

    @model_validator(mode="after")
    def _rank_step_known(self) -> IncreLoraParams:
        if self.incre_rank_num is None and self.avg_target_rank not in RANK_STEP:
            raise ValueError("incre_rank_num is required when avg_target_rank is not 2, 4, 6 or 8")
        return self


class IncreLora(Variant):
    name = "increlora"
    title = "IncreLoRA"
    summary = "Start every layer at rank 1 and add rank, step by step, where it helps the most."
    description = (
        "Instead of giving every layer the same size of update, IncreLoRA starts tiny and keeps a budget. "
        "While training, it measures how much each layer's update matters and, every so often, gives a few "
        "extra 'slots' of capacity to the layers that matter most, until the budget is spent. The extra slots "
        "are warmed up in advance so they start useful. The result is a small adapter whose size per layer "
        "was chosen by the data."
    )
    when_to_use = (
        "When you have a tight parameter budget and want the method to decide which layers deserve more capacity; "
        "init_warmup and incre_interval follow the run length unless you set them (the official 1000 steps suit "
        "long runs)."
    )
    paper = Paper(
        "IncreLoRA: Incremental Parameter Allocation Method for Parameter-Efficient Fine-tuning", 2023, "2308.12043"
    )
    Params = IncreLoraParams
    changes_rank = True
    export_exact = True

    def __init__(self, params: VariantParams | None = None):
        super().__init__(params)
        self.layers: dict[str, Any] = {}
        self.n_add = 0
        self.total_rank = 0
        self.target_rank = 0
        self.reserves_added = False
        self.done = False
        self.ipt: dict[str, float] = {}
        self.avg_ipt: dict[str, float] = {}
        self.avg_unc: dict[str, float] = {}
        self.last_threshold: float | None = None
        self.groups: list[dict[str, Any]] = []  # optimizer groups after the first: {"start", "params": [refs]}
        self._opt: Optimization | None = None
        self.init_warmup = OFFICIAL_INTERVAL  # resolved by build (params, or scaled to the run)
        self.incre_interval = OFFICIAL_INTERVAL

    # -- build ------------------------------------------------------------------------------

    def build(self, ctx: BuildContext) -> Any:
        p = self.params
        model = ctx.model
        for param in model.parameters():
            param.requires_grad_(False)
        self.layers = wrap_linears(
            model, ctx.target_modules, lambda name, linear: IncreLoraLinear(linear, p.r, p.lora_alpha, p.lora_dropout)
        )
        for head in ctx.modules_to_save:
            for param in model.get_submodule(head).parameters():
                param.requires_grad_(True)
        self.n_add = p.incre_rank_num or RANK_STEP[p.avg_target_rank]
        self.total_rank = p.r * len(self.layers)
        self.target_rank = p.avg_target_rank * len(self.layers)
        rounds = allocations_needed(self.total_rank, self.target_rank, self.n_add, p.top_h, len(self.layers))
        warmup, interval = scaled_schedule(ctx.total_steps, rounds)
        self.init_warmup = warmup if p.init_warmup is None else p.init_warmup
        self.incre_interval = interval if p.incre_interval is None else p.incre_interval
        ctx.log(
            f"increlora: first allocation after step {self.init_warmup}, then every {self.incre_interval} steps "
            f"({rounds} rounds spend the budget of {self.target_rank} ranks)"
        )
        self._set_tracking(self.total_rank < self.target_rank)
        return model

    def _set_tracking(self, on: bool) -> None:
        for layer in self.layers.values():
            layer.track = on
            layer.grad_acc = None

    # -- optimisation ---------------------------------------------------------------------------

    def _resolve(self, ref: str) -> Any:
        name, kind, idx = ref.rsplit("|", 2)
        return getattr(self.layers[name], f"lora_{kind}")[int(idx)]

    def configure_optimization(self, model: Any, cfg: OptimConfig) -> Optimization:
        later = {id(self._resolve(ref)) for g in self.groups for ref in g["params"]}
        first = [p for p in model.parameters() if p.requires_grad and id(p) not in later]
        groups = [{"params": first}] + [{"params": [self._resolve(r) for r in g["params"]]} for g in self.groups]
        optimizer = torch.optim.AdamW(
            groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps
        )
        starts = [0] + [g["start"] for g in self.groups]
        scheduler = GrowingLR(optimizer, cfg.total_steps, cfg.warmup_steps, cfg.scheduler, starts)
        self._opt = Optimization([optimizer], [scheduler])
        return self._opt

    def _add_group(self, refs: list[str], start: int) -> None:
        """Put newly trainable tensors in a new optimizer group with its own schedule (official multi_lr)."""
        if not refs:
            return
        self.groups.append({"start": int(start), "params": refs})
        if self._opt is None:
            return
        optimizer, scheduler = self._opt.optimizers[0], self._opt.schedulers[0]
        optimizer.add_param_group({"params": [self._resolve(r) for r in refs]})
        scheduler.add_group(start)

    # -- training hooks -----------------------------------------------------------------------------

    def extra_loss(self, model: Any) -> Any | None:
        if self.params.orth_reg_weight == 0:
            return None
        return self.params.orth_reg_weight * self.orth_regulariser()

    def orth_regulariser(self) -> Any:
        """R_orth of ``orth_form`` over all stored components (active and reserve), unweighted."""
        terms = []
        for layer in self.layers.values():
            a = torch.cat(list(layer.lora_A), 0)
            b = torch.cat(list(layer.lora_B), 1)
            if self.params.orth_form == "paper":
                eye = torch.eye(a.shape[0], device=a.device, dtype=a.dtype)
                terms += [torch.linalg.norm(a @ a.t() - eye), torch.linalg.norm(b.t() @ b - eye)]
            else:  # each a_i (1×n) and b_i (m×1) is its own matrix: ‖vvᵀ − 1‖_F = |‖v‖² − 1|
                terms += [(a.square().sum(1) - 1).abs(), (b.square().sum(0) - 1).abs()]
        if self.params.orth_form == "paper":
            return torch.stack(terms).mean()  # the official NLU trainer divides by 2 per module
        return torch.cat(terms).mean()

    def summed_across_ranks(self, model: Any) -> list[Any]:
        """∂L/∂ΔW collected in backward: each rank holds its share of the step's batch."""
        return [layer.grad_acc for layer in self.layers.values() if layer.grad_acc is not None]

    def importance(self, name: str) -> float:
        """I_m = Σ|ΔW ⊙ ∂L/∂ΔW| / √(m·n) from the gradient collected during backward (0 if none)."""
        layer = self.layers[name]
        if layer.grad_acc is None:
            return 0.0
        with torch.no_grad():
            delta = layer.delta()
            score = (delta.abs() * layer.grad_acc).abs().sum() / math.sqrt(delta.numel())
        return float(score)

    def on_pre_optimizer_step(self, model: Any, step: int) -> None:
        global_step = step - 1  # the official allocator sees the 0-based step before it is incremented
        if not self.done and self.total_rank < self.target_rank:
            self.ipt = {name: self.importance(name) for name in self.layers}  # scores of this step's ΔW
        for layer in self.layers.values():
            layer.grad_acc = None
        if global_step == 0 and not self.reserves_added:
            self._add_initial_reserves(step)
        if self.done or self.total_rank >= self.target_rank:
            return
        b1, b2 = self.params.beta1, self.params.beta2
        for name in self.layers:
            self.avg_ipt[name] = b1 * self.avg_ipt.get(name, 0.0) + (1 - b1) * self.ipt[name]
            self.avg_unc[name] = b2 * self.avg_unc.get(name, 0.0) + (1 - b2) * abs(self.ipt[name] - self.avg_ipt[name])
        if global_step > self.init_warmup and global_step % self.incre_interval == 0:
            self.allocate(step)

    def _add_initial_reserves(self, step: int) -> None:
        adv = self.params.advance_learning
        refs = []
        for name, layer in self.layers.items():
            j = layer.add_chunk(
                self.n_add, e_value=RESERVE_E if adv else 0.0, ab_trainable=adv, e_trainable=False, init=True
            )
            refs += [f"{name}|A|{j}", f"{name}|B|{j}"]
        self.reserves_added = True
        if adv:
            self._add_group(refs, step)

    def scores(self) -> dict[str, float]:
        """Allocation score per module: Ī · Ū."""
        return {name: self.avg_ipt.get(name, 0.0) * self.avg_unc.get(name, 0.0) for name in self.layers}

    def allocate(self, step: int) -> list[str]:
        """One allocation round: activate the reserves of the top-scoring modules; returns their names."""
        scores = self.scores()
        names = list(self.layers)
        remaining = self.target_rank - self.total_rank
        if self.params.clamp_overshoot:
            k_sel = min(self.params.top_h, math.ceil(remaining / self.n_add), len(names))
            order = sorted(range(len(names)), key=lambda i: -scores[names[i]])  # stable: ties by module order
            chosen = [names[i] for i in order[:k_sel]]
            self.last_threshold = scores[chosen[-1]]
        else:
            k_sel = min(self.params.top_h, remaining, len(names))
            threshold = torch.topk(torch.tensor([scores[n] for n in names], dtype=torch.float64), k_sel)[0][-1]
            self.last_threshold = float(threshold)
            chosen = [n for n in names if scores[n] >= self.last_threshold]
        adv = self.params.advance_learning
        refs = []
        with torch.no_grad():
            for name in chosen:
                layer = self.layers[name]
                j = len(layer.lora_E) - 1  # the current reserve chunk
                layer.k += self.n_add  # rescales every existing component by k/(k+n_add): kept, as official
                layer.lora_E[j].requires_grad_(True)
                refs.append(f"{name}|E|{j}")
                if not adv:
                    layer.lora_A[j].requires_grad_(True)
                    layer.lora_B[j].requires_grad_(True)
                    refs += [f"{name}|A|{j}", f"{name}|B|{j}"]
                new = layer.add_chunk(
                    self.n_add, e_value=RESERVE_E if adv else 0.0, ab_trainable=adv, e_trainable=False, init=True
                )
                if adv:
                    refs += [f"{name}|A|{new}", f"{name}|B|{new}"]
                self.total_rank += self.n_add
        self._add_group(refs, step)
        reached = (
            self.total_rank >= self.target_rank if self.params.clamp_overshoot else self.total_rank == self.target_rank
        )
        if reached:
            self._finish_budget()
        return chosen

    def _finish_budget(self) -> None:
        """Budget spent: stop collecting gradients and switch the newest reserves off (e = 0)."""
        self.done = True
        self._set_tracking(False)
        with torch.no_grad():
            for layer in self.layers.values():
                layer.lora_E[-1].zero_()

    # -- rank log -------------------------------------------------------------------------------------

    def rank_allocation(self, model: Any) -> dict[str, int]:
        return {name: int(layer.k) for name, layer in self.layers.items()}

    def rank_extra(self, model: Any) -> dict[str, dict[str, float]]:
        scores = self.scores()
        extra = {}
        for name, layer in self.layers.items():
            extra[name] = {
                "importance": float(self.ipt.get(name, 0.0)),
                "score": float(scores[name]),
                "stored": float(sum(e.numel() for e in layer.lora_E)),
                "budget_used": float(self.total_rank),
                "budget": float(self.target_rank),
            }
            if self.last_threshold is not None:
                extra[name]["threshold"] = float(self.last_threshold)
        return extra

    # -- checkpoints ------------------------------------------------------------------------------------

    def state_dict_extra(self, model: Any) -> dict[str, Any]:
        state: dict[str, Any] = {
            "allocator": {
                "total_rank": self.total_rank,
                "reserves_added": self.reserves_added,
                "done": self.done,
                "ipt": self.ipt,
                "avg_ipt": self.avg_ipt,
                "avg_unc": self.avg_unc,
                "last_threshold": self.last_threshold,
                "groups": self.groups,
                "orth_form": self.params.orth_form,
            },
            "layers": {
                name: {
                    "k": layer.k,
                    "chunks": [int(e.numel()) for e in layer.lora_E],
                    "e_trainable": [bool(e.requires_grad) for e in layer.lora_E],
                    "ab_trainable": [bool(a.requires_grad) for a in layer.lora_A],
                }
                for name, layer in self.layers.items()
            },
        }
        # Frozen tensors are not saved by the engine: reserve e values (1e-5 or 0), frozen reserves.
        for name, layer in self.layers.items():
            for kind in ("A", "B", "E"):
                for j, t in enumerate(getattr(layer, f"lora_{kind}")):
                    if not t.requires_grad:
                        state[f"frozen::{name}|{kind}|{j}"] = t.detach().cpu()
        return state

    def load_state_dict_extra(self, model: Any, state: dict[str, Any]) -> None:
        alloc = state["allocator"]
        for name, info in state["layers"].items():
            layer = self.layers[name]
            layer.k = int(info["k"])
            for j, c in enumerate(info["chunks"]):
                if j >= len(layer.lora_E):  # grown during training: recreate without touching the RNG
                    layer.add_chunk(c, e_value=0.0, ab_trainable=False, e_trainable=False, init=False)
                layer.lora_E[j].requires_grad_(info["e_trainable"][j])
                layer.lora_A[j].requires_grad_(info["ab_trainable"][j])
                layer.lora_B[j].requires_grad_(info["ab_trainable"][j])
        with torch.no_grad():
            for key, value in state.items():
                if key.startswith("frozen::"):
                    self._resolve(key.removeprefix("frozen::")).copy_(value)
        self.total_rank = int(alloc["total_rank"])
        self.reserves_added = bool(alloc["reserves_added"])
        self.done = bool(alloc["done"])
        self.ipt, self.avg_ipt, self.avg_unc = dict(alloc["ipt"]), dict(alloc["avg_ipt"]), dict(alloc["avg_unc"])
        self.last_threshold = alloc["last_threshold"]
        known = len(self.groups)
        self._set_tracking(not self.done and self.total_rank < self.target_rank)
        for group in alloc["groups"][known:]:  # also extends an optimizer configured before this call
            self._add_group(list(group["params"]), int(group["start"]))

    # -- the contract and export -----------------------------------------------------------------------

    def delta_weights(self, model: Any) -> dict[str, Any]:
        with torch.no_grad():
            return {name: layer.delta().float().cpu() for name, layer in self.layers.items()}

    def plain_lora_factors(self, model: Any) -> dict[str, tuple[Any, Any]]:
        """A′ = a_iᵀ stacked, B′ = α/(k+1e-5)·e_i·b_i for the components with e_i ≠ 0."""
        out = {}
        with torch.no_grad():
            for name, layer in self.layers.items():
                a, b, coef = layer.factors()
                keep = coef != 0
                out[name] = ((b[:, keep] * coef[keep]).float().cpu(), a[keep].float().cpu())
        return out


VARIANT = IncreLora
