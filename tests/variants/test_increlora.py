"""IncreLoRA (spec §3): importance by hand, one allocation, reserves, schedules, resume, exact export."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from variant_helpers import engine_step, make_ctx, tiny_llama, token_batches

from studio.variants.base import ExportContext, OptimConfig
from studio.variants.increlora import RESERVE_E, IncreLora, IncreLoraParams, allocations_needed, scaled_schedule

# -- helpers (the shared set-up is in variant_helpers) ---------------------------------------------------


def cfg(total: int = 20, warmup: int = 2, lr: float = 1e-2) -> OptimConfig:
    return OptimConfig(learning_rate=lr, weight_decay=0.0, total_steps=total, warmup_steps=warmup, scheduler="linear")


def one_step(variant, model, opt, batch, step: int) -> float:
    """The engine's order of hooks for one optimizer step (studio.training.loop), clipped at 1.0; the task loss."""
    loss = engine_step(variant, model, opt, batch, step, max_norm=1.0)
    for o in opt.optimizers:  # also any optimizer tensor that is not (or no longer) one of model.parameters()
        o.zero_grad(set_to_none=True)
    return loss.item()


def build(params: dict, total: int = 20, seed: int = 0):
    variant = IncreLora(IncreLoraParams(**params))
    model = tiny_llama()
    torch.manual_seed(seed)
    model = variant.build(make_ctx(model, total_steps=total))
    opt = variant.configure_optimization(model, cfg(total))
    return variant, model, opt


# -- importance ---------------------------------------------------------------------------------------


class TwoLayerMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_importance_matches_hand_computation_on_two_layer_mlp():
    torch.manual_seed(0)
    mlp = TwoLayerMLP()
    w0 = {
        n: (mlp.get_submodule(n).weight.detach().clone(), mlp.get_submodule(n).bias.detach().clone())
        for n in ("fc1", "fc2")
    }
    variant = IncreLora(
        IncreLoraParams(r=2, avg_target_rank=4, lora_alpha=4.0, lora_dropout=0.0, orth_reg_weight=0.0, init_warmup=100)
    )
    model = variant.build(make_ctx(mlp, targets=["fc1", "fc2"], total_steps=20))
    with torch.no_grad():  # give ΔW a visible size
        for layer in variant.layers.values():
            layer.lora_A[0].normal_()
            layer.lora_B[0].normal_()
            layer.lora_E[0].copy_(torch.tensor([0.7, -1.3]))
    x, target = torch.randn(4, 6), torch.randn(4, 3)
    ((model(x) - target) ** 2).mean().backward()

    # by hand: ΔW = α/(k+1e-5) Σ e_i b_i a_iᵀ as explicit leaves, same loss, autograd for ∂L/∂ΔW
    deltas = {}
    for name, layer in variant.layers.items():
        a, b, e = layer.lora_A[0].detach(), layer.lora_B[0].detach(), layer.lora_E[0].detach()
        d = sum(e[i] * torch.outer(b[:, i], a[i]) for i in range(2)) * (4.0 / (2 + 1e-5))
        deltas[name] = d.clone().requires_grad_(True)
    h = torch.relu(x @ (w0["fc1"][0] + deltas["fc1"]).t() + w0["fc1"][1])
    y = h @ (w0["fc2"][0] + deltas["fc2"]).t() + w0["fc2"][1]
    ((y - target) ** 2).mean().backward()
    expected = {n: float((d.detach() * d.grad).abs().sum() / math.sqrt(d.numel())) for n, d in deltas.items()}

    variant.on_pre_optimizer_step(model, 1)
    for name, value in expected.items():
        assert variant.ipt[name] == pytest.approx(value, rel=1e-5)
        assert variant.avg_ipt[name] == pytest.approx(0.15 * value, rel=1e-5)  # Ī = (1−β1)·I from 0
        assert variant.avg_unc[name] == pytest.approx(0.15 * 0.85 * value, rel=1e-5)  # Ū = (1−β2)|I − Ī|
        assert variant.scores()[name] == pytest.approx(0.15 * value * 0.15 * 0.85 * value, rel=1e-5)


# -- allocation ---------------------------------------------------------------------------------------------


def test_one_allocation_raises_total_by_top_h_times_n_add_on_top_modules():
    variant, model, opt = build({"avg_target_rank": 4, "top_h": 3, "init_warmup": 1000, "lora_dropout": 0.0})
    data = token_batches(4)
    one_step(variant, model, opt, data[0], 1)  # step 1 adds the reserves (official global_step 0)
    names = list(variant.layers)
    assert variant.n_add == 2 and variant.total_rank == len(names) and variant.target_rank == 4 * len(names)
    torch.manual_seed(3)
    scores = torch.rand(len(names)).tolist()
    variant.avg_ipt = dict(zip(names, scores, strict=True))
    variant.avg_unc = dict.fromkeys(names, 1.0)
    top = sorted(names, key=lambda n: -variant.scores()[n])[:3]
    before = {n: variant.layers[n].delta().detach().clone() for n in names}
    groups_before = len(opt.optimizers[0].param_groups)

    chosen = variant.allocate(2)

    assert sorted(chosen) == sorted(top)
    assert variant.total_rank == len(names) + 3 * 2
    for name, layer in variant.layers.items():
        assert layer.k == (3 if name in top else 1)
        if name in top:  # reserves activated (e trainable) and two new frozen-e reserves appended
            assert layer.lora_E[1].requires_grad and len(layer.lora_E) == 3
            assert torch.equal(layer.lora_E[2], torch.full((2,), RESERVE_E))
            # existing components rescaled by k/(k+Δ); the new reserves add their own tiny term
            a, b = layer.lora_A[2].detach(), layer.lora_B[2].detach()
            new = (b * (RESERVE_E * 16.0 / (3 + 1e-5))) @ a
            expected = before[name] * (1 + 1e-5) / (3 + 1e-5) + new
            torch.testing.assert_close(layer.delta().detach(), expected, rtol=1e-5, atol=1e-9)
        else:
            assert len(layer.lora_E) == 2 and not layer.lora_E[1].requires_grad
    groups = opt.optimizers[0].param_groups
    assert len(groups) == groups_before + 1
    new_ids = {id(p) for p in groups[-1]["params"]}
    for name in top:
        layer = variant.layers[name]
        assert {id(layer.lora_E[1]), id(layer.lora_A[2]), id(layer.lora_B[2])} <= new_ids
    assert variant.last_threshold == pytest.approx(variant.scores()[top[-1]])


def test_budget_reached_stops_tracking_and_switches_newest_reserves_off():
    variant, model, opt = build({"avg_target_rank": 2, "top_h": 100, "init_warmup": 1000})
    one_step(variant, model, opt, token_batches(4)[0], 1)
    variant.avg_ipt = dict.fromkeys(variant.layers, 1.0)
    variant.avg_unc = dict.fromkeys(variant.layers, 1.0)
    variant.allocate(2)  # 14 modules × n_add 1 = the whole remaining budget
    assert variant.total_rank == variant.target_rank and variant.done
    for layer in variant.layers.values():
        assert not layer.track and layer.k == 2
        assert torch.equal(layer.lora_E[-1], torch.zeros(1))


def test_overshoot_official_and_clamped():
    # remaining budget 1 rank, n_add 2: official activates a whole n_add on top_h = min(3, 1) module(s)
    official, model, opt = build({"avg_target_rank": 4, "top_h": 3, "init_warmup": 1000})
    one_step(official, model, opt, token_batches(4)[0], 1)
    official.total_rank = official.target_rank - 5
    official.avg_ipt = {n: float(i) for i, n in enumerate(official.layers)}
    official.avg_unc = dict.fromkeys(official.layers, 1.0)
    official.allocate(2)
    assert official.total_rank == official.target_rank + 1  # 3 modules × 2 > 5: overshoot, never "==" → not done
    assert not official.done
    clamped, model, opt = build({"avg_target_rank": 4, "top_h": 3, "init_warmup": 1000, "clamp_overshoot": True})
    one_step(clamped, model, opt, token_batches(4)[0], 1)
    clamped.total_rank = clamped.target_rank - 5
    clamped.avg_ipt = {n: float(i) for i, n in enumerate(clamped.layers)}
    clamped.avg_unc = dict.fromkeys(clamped.layers, 1.0)
    chosen = clamped.allocate(2)
    assert len(chosen) == 3 and clamped.done  # ceil(5/2) = 3 modules, budget counted as reached


def test_reserve_e_stays_fixed_while_a_and_b_move():
    variant, model, opt = build({"init_warmup": 1000, "lora_dropout": 0.0})
    data = token_batches(4)
    one_step(variant, model, opt, data[0], 1)
    reserves = {n: (m.lora_A[1].detach().clone(), m.lora_B[1].detach().clone()) for n, m in variant.layers.items()}
    for step in range(2, 6):
        one_step(variant, model, opt, data[step % 4], step)
    for name, layer in variant.layers.items():
        assert not layer.lora_E[1].requires_grad
        assert torch.equal(layer.lora_E[1], torch.full((1,), RESERVE_E, dtype=torch.float32))
        assert not torch.equal(layer.lora_A[1], reserves[name][0])
        assert not torch.equal(layer.lora_B[1], reserves[name][1])


def test_new_groups_warm_up_then_decay_to_the_original_end():
    variant, model, opt = build({"init_warmup": 1000}, total=20)
    one_step(variant, model, opt, token_batches(4)[0], 1)  # reserves: group 1, started at scheduler step 1
    optimizer, scheduler = opt.optimizers[0], opt.schedulers[0]
    assert len(optimizer.param_groups) == 2 and scheduler.starts == [0, 1]
    lrs = []
    for step in range(2, 21):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        one_step(variant, model, opt, token_batches(4)[step % 4], step)
    # group 1 at step s has local step s−2: warmup (k+1)/(w+1) over 2 steps, then linear to 0 at step 21
    assert lrs[0][1] == pytest.approx(1e-2 * 1 / 3) and lrs[1][1] == pytest.approx(1e-2 * 2 / 3)
    assert lrs[2][1] == pytest.approx(1e-2 * (1 - 0 / 17))
    assert lrs[-1][1] == pytest.approx(1e-2 * (1 - 16 / 17))
    assert scheduler.get_last_lr()[1] == pytest.approx(0.0) and scheduler.get_last_lr()[0] == pytest.approx(0.0)


def test_orth_regulariser_forms():
    variant, model, _ = build({"orth_form": "paper"})
    terms = []
    for layer in variant.layers.values():
        a = torch.cat(list(layer.lora_A)).detach()
        b = torch.cat(list(layer.lora_B), 1).detach()
        eye = torch.eye(a.shape[0])
        terms += [torch.sqrt(((a @ a.t() - eye) ** 2).sum()), torch.sqrt(((b.t() @ b - eye) ** 2).sum())]
    assert float(variant.orth_regulariser()) == pytest.approx(float(sum(terms) / len(terms)), rel=1e-6)
    variant.params = variant.params.model_copy(update={"orth_form": "official"})
    vec = []
    for layer in variant.layers.values():
        vec += [abs(float(v.dot(v)) - 1) for v in layer.lora_A[0].detach()]
        vec += [abs(float(v.dot(v)) - 1) for v in layer.lora_B[0].detach().t()]
    assert float(variant.orth_regulariser()) == pytest.approx(sum(vec) / len(vec), rel=1e-6)


# -- resume and export ---------------------------------------------------------------------------------------


def train_with_growth(total: int, stop: int | None = None):
    params = {"avg_target_rank": 4, "top_h": 4, "init_warmup": 2, "incre_interval": 2, "lora_dropout": 0.0}
    variant, model, opt = build(params, total=total)
    data = token_batches(4)
    losses = [one_step(variant, model, opt, data[s % 4], s) for s in range(1, (stop or total) + 1)]
    return variant, model, opt, losses, params


def test_resume_restores_grown_structure_and_continues_identically():
    total, cut = 10, 5
    _, _, _, full, params = train_with_growth(total)
    variant, model, opt, first, _ = train_with_growth(total, stop=cut)
    assert variant.total_rank > len(variant.layers)  # something grew before the cut
    extra = copy.deepcopy(variant.state_dict_extra(model))
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt_state = copy.deepcopy([o.state_dict() for o in opt.optimizers])
    sched_state = copy.deepcopy([s.state_dict() for s in opt.schedulers])
    rng = torch.get_rng_state()

    resumed = IncreLora(IncreLoraParams(**params))
    torch.manual_seed(0)
    model2 = resumed.build(make_ctx(tiny_llama(), total_steps=total))
    resumed.load_state_dict_extra(model2, extra)
    named = dict(model2.named_parameters())
    assert {n for n, p in named.items() if p.requires_grad} == set(trainable)
    with torch.no_grad():
        for n, t in trainable.items():
            named[n].copy_(t)
    opt2 = resumed.configure_optimization(model2, cfg(total))
    for o, s in zip(opt2.optimizers, opt_state, strict=True):
        o.load_state_dict(s)
    for sch, s in zip(opt2.schedulers, sched_state, strict=True):
        sch.load_state_dict(s)
    torch.set_rng_state(rng)
    data = token_batches(4)
    rest = [one_step(resumed, model2, opt2, data[s % 4], s) for s in range(cut + 1, total + 1)]
    assert first + rest == pytest.approx(full, rel=1e-6, abs=1e-7)


def test_universal_export_after_growth(tmp_path):
    from peft import PeftModel

    variant, model, _, _, _ = train_with_growth(8)
    assert any(layer.k > 1 for layer in variant.layers.values())
    ectx = ExportContext(fresh_base=tiny_llama, task="causal-lm", modules_to_save=[])
    report = variant.export_plain_lora(model, tmp_path / "lora", ectx)
    assert report.exact
    merged = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "lora")).merge_and_unload().eval()
    base = tiny_llama().state_dict()
    for name, delta in variant.delta_weights(model).items():
        w0 = base[f"{name}.weight"]
        diff = (merged.get_submodule(name).weight - (w0 + delta)).abs().max()
        assert float(diff) <= 1e-5 * float(w0.abs().max())
    model.eval()
    ids = torch.randint(1, 64, (2, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4, rtol=0)


# -- schedule scaled to the run ----------------------------------------------------------------------------


def test_default_schedule_grows_rank_in_a_30_step_run(train_tiny):
    from studio.progress import MemoryReporter

    reporter = MemoryReporter()
    result = train_tiny("increlora", reporter=reporter, max_steps=30)
    variant = result.variant
    assert variant.params.init_warmup is None and variant.params.incre_interval is None  # the defaults
    total_by_step: dict[int, int] = {}
    for step, _module, rank in reporter.rank_rows:
        total_by_step[step] = total_by_step.get(step, 0) + rank
    modules = len(variant.layers)
    assert total_by_step[1] == modules  # every module starts at rank 1
    grown = [step for step, total in sorted(total_by_step.items()) if total > modules]
    assert grown and grown[0] > variant.init_warmup  # no allocation during the warmup
    # the whole budget is spent by 70% of the run, leaving steps to train the new ranks
    spent = min(step for step, total in total_by_step.items() if total >= variant.target_rank)
    assert spent <= 0.7 * 30 + 1
    final = variant.final_ranks(result.model)
    assert sum(final.values()) >= variant.target_rank and max(final.values()) > 1


def test_scaled_schedule_keeps_the_official_values_on_long_runs_and_shrinks_on_short_ones():
    rounds = allocations_needed(72, 144, 1, 5, 72)  # DeBERTaV3-base: 72 modules, r 1 -> avg 2, top_h 5
    assert rounds == 15
    assert scaled_schedule(50_000, rounds) == (1000, 1000)  # the official values
    warmup, interval = scaled_schedule(5_000, rounds)
    assert warmup == 500 and warmup + rounds * interval <= 0.7 * 5_000
    warmup, interval = scaled_schedule(30, 200)  # more rounds than steps: allocate every step after warmup
    assert (warmup, interval) == (3, 1)


def test_explicit_schedule_is_used_as_given():
    variant, *_ = build({"init_warmup": 7, "incre_interval": 4}, total=30)
    assert (variant.init_warmup, variant.incre_interval) == (7, 4)
    variant, *_ = build({}, total=30_000)
    assert (variant.init_warmup, variant.incre_interval) == (1000, 1000)
