"""SoRA (spec §5): gate thresholds, L1 gradient, two optimizers, scheduler, exact export incl. empty modules."""

from __future__ import annotations

import pytest
import torch
from variant_helpers import build_variant, run_steps, tiny_llama, token_batches

from studio.variants import _sora_schedule as sched
from studio.variants._adapter_wrap import adapter_layers
from studio.variants.base import ExportContext, OptimConfig
from studio.variants.sora import Sora, SoraLinear

# -- helpers (the shared set-up is in variant_helpers) ---------------------------------------------------


def build(params: dict | None = None, seed: int = 0, task: str = "causal-lm", total: int = 10):
    variant = Sora(Sora.parse_params(params or {}))
    heads = ["score"] if task == "classification" else []
    ctx = {"task": task, "heads": heads, "total_steps": total, "weight_decay": 0.1}
    return variant, build_variant(variant, tiny_llama(task=task), seed=seed, **ctx)


def config(lr: float = 1e-2, wd: float = 0.1, total: int = 10, warmup: int = 0, kind: str = "linear"):
    return OptimConfig(learning_rate=lr, weight_decay=wd, total_steps=total, warmup_steps=warmup, scheduler=kind)


def gates(model) -> dict[str, torch.nn.Parameter]:
    return {name: layer.gate for name, layer in adapter_layers(model, SoraLinear).items()}


def check_universal_export(variant, model, tmp_path, task="causal-lm", heads=()):
    """Spec §0: reload as plain PEFT LoRA on the original base, merge, compare W and logits."""
    from peft import PeftModel

    original = tiny_llama(task=task).state_dict()
    ectx = ExportContext(fresh_base=lambda: tiny_llama(task=task), task=task, modules_to_save=list(heads))
    report = variant.save_adapter(model, tmp_path / "adapter", ectx)
    merged = PeftModel.from_pretrained(tiny_llama(task=task), str(tmp_path / "adapter")).merge_and_unload().eval()
    for name, delta in variant.delta_weights(model).items():
        w0 = original[f"{name}.weight"]
        assert (merged.get_submodule(name).weight - (w0 + delta)).abs().max() <= 1e-5 * w0.abs().max(), name
    model.eval()
    ids = token_batches(1, seed=9)[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, model(ids).logits, rtol=0, atol=1e-4)
    return report


# -- thresholds --------------------------------------------------------------------------------------

VALUES = [0.05, 0.1, 0.15, 0.25, -0.15, -0.25, -0.05, 0.0, 0.19, -0.2]


def test_thresholds_by_hand():
    v = torch.tensor(VALUES, dtype=torch.float64)
    # paper: soft threshold sign(v)·max(|v| − 0.1, 0)
    paper = [0.0, 0.0, 0.05, 0.15, -0.05, -0.15, 0.0, 0.0, 0.09, -0.1]
    torch.testing.assert_close(sched.apply_threshold(v, 0.1, "paper"), torch.tensor(paper, dtype=torch.float64))
    # official: |v| < 2ξ → 0, otherwise moved by ξ towards 0; |v| = ξ exactly stays (official quirk)
    official = [0.0, 0.1, 0.0, 0.15, 0.0, -0.15, 0.0, 0.0, 0.0, -0.1]
    out = sched.apply_threshold(v, 0.1, "official")
    torch.testing.assert_close(out, torch.tensor(official, dtype=torch.float64))
    assert all(out[i] == 0 for i, x in enumerate(official) if x == 0)  # exactly 0, not tiny
    assert torch.equal(sched.apply_threshold(v, 0.0, "official"), v)


@pytest.mark.parametrize("mode", ["official", "paper"])
def test_after_a_gate_step_small_entries_are_zero_and_others_moved_by_xi(mode):
    xi = 0.05
    variant, model = build({"r": 8, "xi": xi, "threshold_mode": mode})
    with torch.no_grad():  # spread the gates over the threshold zone
        for k, g in enumerate(gates(model).values()):
            g.copy_(torch.linspace(-0.2, 0.2, 8) + 0.003 * k)
    opt = variant.configure_optimization(model, config())
    model(**token_batches(1)[0]).loss.backward()
    for o in opt.optimizers:
        o.step()
    mid = {n: g.detach().clone() for n, g in gates(model).items()}  # after the AdamW step, before the prox
    variant.on_optimizer_step(model, 1)
    for name, g in gates(model).items():
        v = mid[name]
        zero = v.abs() < (2 * xi if mode == "official" else xi)
        if mode == "paper":
            zero |= v.abs() == xi
        assert torch.count_nonzero(g[zero]) == 0, name
        torch.testing.assert_close(g[~zero], v[~zero] - xi * torch.sign(v[~zero]), rtol=0, atol=1e-7)
        assert 0 < int(zero.sum()) < 8


def test_xi_times_lr_uses_the_gate_learning_rate():
    variant, model = build({"r": 4, "xi": 0.5, "xi_times_lr": True, "gate_lr": 0.2})
    variant.configure_optimization(model, config(lr=1e-3))
    assert variant.current_xi(1) == pytest.approx(0.1)
    with torch.no_grad():
        for g in gates(model).values():
            g.copy_(torch.tensor([0.05, 0.25, -0.5, 0.19]))
    variant.on_optimizer_step(model, 1)
    for g in gates(model).values():  # official mode with ξ = 0.1: |v| < 0.2 → 0, else −0.1·sign
        torch.testing.assert_close(g.detach(), torch.tensor([0.0, 0.15, -0.4, 0.0]))


# -- loss, optimizers, allocation -----------------------------------------------------------------------


def test_l1_gradient_is_lambda_sign_over_number_of_gates():
    variant, model = build({"r": 4, "l1_lambda": 10.0})
    all_gates = list(gates(model).values())
    with torch.no_grad():
        all_gates[0][1] = 0.0  # sign(0) = 0: no pull on an entry that is already zero
    n = sum(g.numel() for g in all_gates)
    loss = variant.extra_loss(model)
    expected_loss = 10.0 * sum(float(g.detach().abs().sum()) for g in all_gates) / n
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
    loss.backward()
    for g in all_gates:
        torch.testing.assert_close(g.grad, 10.0 * torch.sign(g.detach()) / n)
    assert all_gates[0].grad[1] == 0
    assert all(layer.lora_A.grad is None for layer in adapter_layers(model, SoraLinear).values())


def test_two_optimizers_clipping_and_trained_norms():
    variant, model = build({"r": 4, "gate_lr": 3e-3})
    opt = variant.configure_optimization(model, config(lr=1e-2, wd=0.1))
    assert opt.max_grad_norm == 0.1 and len(opt.optimizers) == 2 and len(opt.schedulers) == 2
    main, gate_opt = opt.optimizers
    gate_ids = {id(g) for g in gates(model).values()}
    assert {id(p) for p in gate_opt.param_groups[0]["params"]} == gate_ids
    assert gate_opt.param_groups[0]["weight_decay"] == 0.0 and gate_opt.param_groups[0]["lr"] == 3e-3
    decay, no_decay = main.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert not gate_ids & {id(p) for g in main.param_groups for p in g["params"]}
    norm_ids = {id(p) for n, p in model.named_parameters() if "norm" in n}
    assert norm_ids and norm_ids == {id(p) for p in no_decay["params"]}
    assert all(p.requires_grad for n, p in model.named_parameters() if "norm" in n)
    _, plain = build({"r": 4, "train_norms": False})
    assert not any(p.requires_grad for n, p in plain.named_parameters() if "norm" in n)


def test_rank_allocation_is_nnz_of_each_gate():
    variant, model = build({"r": 4})
    names = list(gates(model))
    with torch.no_grad():
        gates(model)[names[0]].copy_(torch.tensor([0.0, 1.0, 0.0, 2.0]))
        gates(model)[names[1]].zero_()
    ranks = variant.rank_allocation(model)
    assert ranks[names[0]] == 2 and ranks[names[1]] == 0 and ranks[names[2]] == 4
    extra = variant.rank_extra(model)[names[0]]
    layer = adapter_layers(model, SoraLinear)[names[0]]
    assert extra["retained_params"] == 2 * (layer.in_features + layer.out_features) and extra["sparsity"] == 0.5


# -- sparsifying scheduler -----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_scheduler_values_stages_and_learning_rates():
    xs = sched.xi_values(0.0, 7e-4, 7, "linear")
    assert xs == pytest.approx([k * 7e-4 / 6 for k in range(7)])
    assert sched.xi_values(1e-4, 1e-2, 3, "exp_linear") == pytest.approx([1e-4, 1e-3, 1e-2])
    starts = sched.stage_starts(140, 7, 50 / 140)
    assert starts == [1, 51, 66, 81, 96, 111, 126]  # 50 initial steps, then 6 stages of 15
    assert [sched.stage_of(s, starts) for s in (1, 50, 51, 65, 66, 140)] == [0, 0, 1, 1, 2, 6]
    official = sched.staged_lr_lambda(140, 14, "linear", starts, "official")
    assert official(0) > 0 and official(49) > 0 and official(50) == 0 and official(139) == 0
    restart = sched.staged_lr_lambda(140, 14, "linear", starts, "restart")
    assert restart(50) == pytest.approx(1 / 3)  # stage 1: warmup 14·15/140 = 2 steps → 1/3
    assert restart(52) == pytest.approx(1.0) and restart(64) == pytest.approx(1 / 13)

    variant, model = build({"r": 4, "schedule": "sparsify"}, total=140)
    opt = variant.configure_optimization(model, config(total=140, warmup=14))
    assert variant.l1_lambda == 1e-3 and variant.xi_at(50) == 0.0 and variant.xi_at(51) == pytest.approx(7e-4 / 6)
    assert variant.xi_at(140) == pytest.approx(7e-4)
    for _ in range(60):
        for s in opt.schedulers:
            s.step()
    assert all(o.param_groups[0]["lr"] == 0.0 for o in opt.optimizers)  # official: decayed schedules reused


def test_scheduler_prunes_gates_while_lr_is_zero():
    variant, model = build({"r": 4, "schedule": "sparsify", "schedule_xi_max": 0.3, "schedule_stages": 3}, total=6)
    run_steps(variant, model, token_batches(2), 6, config(total=6, lr=1e-2))
    starts = variant.stage_starts()
    assert starts == [1, 3, 5]  # round(6·50/140) = 2 initial steps, then 2 stages of 2
    assert sum(variant.rank_allocation(model).values()) < 4 * len(gates(model))
    assert variant.rank_extra(model)[next(iter(gates(model)))]["stage"] == 2


# -- export -----------------------------------------------------------------------------------------


def test_universal_export_with_an_all_zero_module(tmp_path):
    variant, model = build({"r": 4, "xi": 1e-3})
    run_steps(variant, model, token_batches(2), 5, config(lr=2e-2, wd=0.0))
    names = list(gates(model))
    with torch.no_grad():
        gates(model)[names[0]].zero_()  # no survivor: dropped from the export
        gates(model)[names[1]][0] = 0.0  # one component gone: rank 3
    report = check_universal_export(variant, model, tmp_path)
    assert names[0] not in report.ranks and report.ranks[names[1]] == 3
    assert report.ranks == {n: r for n, r in variant.rank_allocation(model).items() if r > 0}
    b, a = variant.plain_lora_factors(model)[names[1]]
    layer = adapter_layers(model, SoraLinear)[names[1]]
    idx = [1, 2, 3]
    torch.testing.assert_close(a, layer.lora_A[idx].detach())
    torch.testing.assert_close(b, layer.scaling * layer.lora_B[:, idx].detach() * layer.gate[idx].detach())
    from peft import PeftConfig

    cfg = PeftConfig.from_pretrained(str(tmp_path / "adapter"))
    assert names[0] not in cfg.target_modules and any("norm" in m for m in cfg.modules_to_save)


def test_universal_export_classification_with_head_and_norms(tmp_path):
    variant, model = build({"r": 4}, task="classification")
    run_steps(variant, model, token_batches(2, classes=2), 4, config(lr=2e-2, wd=0.0))
    assert model.score.weight.requires_grad
    report = check_universal_export(variant, model, tmp_path, task="classification", heads=["score"])
    assert report.exact


def test_sparsifying_scheduler_scores_memorisation_and_generalisation_per_stage(train_tiny):
    from studio.charts_diagnostics import stage_figure, stage_rows
    from studio.progress import MemoryReporter

    params = {"schedule": "sparsify", "schedule_stages": 3, "schedule_xi_max": 0.5, "schedule_initial_fraction": 0.5}
    reporter = MemoryReporter()
    result = train_tiny("sora", params, reporter=reporter, max_steps=8, validation_fraction=0.25)
    variant = Sora(Sora.parse_params(params))
    ends = variant.stage_ends(8)
    assert ends == [4, 6, 8]  # initial phase 1-4, then two stages of two steps
    assert [row["step"] for row in result.stages] == ends and [row["stage"] for row in result.stages] == [0, 1, 2]
    for row in result.stages:
        assert row["train_loss"] > 0 and row["val_loss"] > 0  # memorisation subset and validation both scored
    # ξ only grows and later stages' learning rate is ~0 (official stage_lr): components only switch off.
    active = [row["active_components"] for row in result.stages]
    assert active == sorted(active, reverse=True) and active[-1] < active[0]
    ranks_at_end = {m: r for s, m, r in reporter.rank_rows if s == 8}
    assert active[-1] == sum(ranks_at_end.values())
    # The registry rows carry the same numbers; the chart plots both curves against active components.
    stages = stage_rows({"step": s, "name": n, "value": v} for s, n, v in reporter.metric_rows)
    assert [s["active_components"] for s in stages] == active
    figure = stage_figure({"step": s, "name": n, "value": v} for s, n, v in reporter.metric_rows)
    assert [list(t.x) for t in figure.data] == [active, active]
    assert any("stage 2 ends at step 8" in text for _, text in reporter.logs)


def test_without_the_scheduler_there_are_no_stage_evaluations(train_tiny):
    result = train_tiny("sora", max_steps=2)
    assert result.stages == [] and Sora().stage_ends(2) == []
