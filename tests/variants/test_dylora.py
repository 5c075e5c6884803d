"""DyLoRA (spec §1): rank sampling, frozen-mode gradients, truncated forward, export at any rank."""

from __future__ import annotations

import copy

import pytest
import torch
from variant_helpers import build_variant, run_steps, tiny_llama, token_batches

from studio.variants._adapter_wrap import adapter_layers
from studio.variants.base import ExportContext, OptimConfig
from studio.variants.dylora import DyLora, DyLoraLinear, evaluate_over_ranks, sample_rank

# -- helpers (the shared set-up is in variant_helpers) ---------------------------------------------------


def build(params: dict | None = None, seed: int = 0, total: int = 10):
    variant = DyLora(DyLora.parse_params(params or {}))
    return variant, build_variant(variant, tiny_llama(), seed=seed, total_steps=total, weight_decay=0.1)


def cfg(lr: float = 1e-2, wd: float = 0.1, total: int = 10) -> OptimConfig:
    return OptimConfig(learning_rate=lr, weight_decay=wd, total_steps=total, warmup_steps=0, scheduler="constant")


def randomise_b(model, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter_layers(model, DyLoraLinear).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)


# -- tests -------------------------------------------------------------------------------------------


def test_forward_at_rank_b_matches_hand_sum_of_components():
    torch.manual_seed(0)
    base = torch.nn.Linear(5, 4, bias=True)
    layer = DyLoraLinear(base, r=4, alpha=6.0, dropout=0.0, frozen=True)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(4, 4))
    x = torch.randn(3, 5)
    for b in range(1, 5):
        layer.train_rank = b
        expected = x @ base.weight.T + base.bias
        for i in range(b):  # Σ_{i<b} (α/b) B[:, i] A[i]ᵀ x, component by component
            expected = expected + (6.0 / b) * torch.outer(x @ layer.lora_A[i], layer.lora_B[:, i])
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(layer.delta_at(b), (6.0 / b) * layer.lora_B[:, :b] @ layer.lora_A[:b])


@pytest.mark.parametrize("mode", ["frozen", "full"])
def test_gradients_only_in_trained_components(mode):
    variant, model = build({"r": 6, "mode": mode})
    randomise_b(model)  # with B = 0 the gradient of A would vanish everywhere
    model.train()
    b = 4
    for layer in adapter_layers(model, DyLoraLinear).values():
        layer.train_rank = b
    model(**token_batches(1)[0]).loss.backward()
    trained = [b - 1] if mode == "frozen" else list(range(b))
    for name, layer in adapter_layers(model, DyLoraLinear).items():
        for i in range(6):
            a_row, b_col = layer.lora_A.grad[i], layer.lora_B.grad[:, i]
            if i in trained:
                assert a_row.abs().sum() > 0 and b_col.abs().sum() > 0, (name, i)
            else:
                assert torch.count_nonzero(a_row) == 0 and torch.count_nonzero(b_col) == 0, (name, i)


def test_at_r_max_equals_plain_lora_with_scale_alpha_over_r():
    from peft import LoraConfig, get_peft_model

    variant, model = build({"r": 4, "lora_alpha": 12})
    randomise_b(model)
    peft_model = get_peft_model(
        tiny_llama(),
        LoraConfig(
            r=4,
            lora_alpha=12,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    root = peft_model.base_model.model
    with torch.no_grad():
        for name, layer in adapter_layers(model, DyLoraLinear).items():
            peft_layer = root.get_submodule(name)
            assert peft_layer.scaling["default"] == 12 / 4
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
    ids = token_batches(1)[0]["input_ids"]
    model.train()
    peft_model.train()
    for layer in adapter_layers(model, DyLoraLinear).values():
        layer.train_rank = 4
    torch.testing.assert_close(model(ids).logits, peft_model(ids).logits, rtol=0, atol=1e-5)
    model.eval()
    peft_model.eval()
    torch.testing.assert_close(model(ids).logits, peft_model(ids).logits, rtol=0, atol=1e-5)


def test_sampled_rank_is_uniform_deterministic_and_fixed_for_the_step():
    draws = [sample_rank(7, s, 2, 6) for s in range(1, 2001)]
    assert set(draws) == {2, 3, 4, 5, 6}
    assert draws == [sample_rank(7, s, 2, 6) for s in range(1, 2001)]  # a resumed run draws the same
    counts = torch.bincount(torch.tensor(draws))[2:]
    assert counts.min() > 330 and counts.max() < 470  # 400 expected each

    variant, model = build({"r": 6, "r_min": 2})
    variant.on_step_begin(model, 5)
    ranks = {layer.train_rank for layer in adapter_layers(model, DyLoraLinear).values()}
    assert ranks == {sample_rank(0, 5, 2, 6)}  # one b for every module (and every micro-batch)
    assert set(variant.rank_allocation(model).values()) == ranks
    assert variant.rank_extra(model)
    model.eval()
    assert all(layer.active_rank() == 6 for layer in adapter_layers(model, DyLoraLinear).values())


@pytest.mark.parametrize("strict", [False, True])
def test_strict_freeze_keeps_untrained_components(strict):
    variant, model = build({"r": 4, "strict_freeze": strict})
    randomise_b(model)
    data = token_batches(2)
    opt = run_steps(variant, model, data, 3, cfg())  # builds up momentum on several components
    layers = adapter_layers(model, DyLoraLinear)
    before = {n: (ly.lora_A.detach().clone(), ly.lora_B.detach().clone()) for n, ly in layers.items()}
    moments = {n: opt.optimizers[0].state[ly.lora_A]["exp_avg"].clone() for n, ly in layers.items()}
    variant.on_step_begin(model, 4)
    b = variant.current_rank
    model(**data[0]).loss.backward()
    variant.on_pre_optimizer_step(model, 4)
    opt.optimizers[0].step()
    variant.on_optimizer_step(model, 4)
    untouched = [i for i in range(4) if i != b - 1]
    moved = False
    for name, layer in layers.items():
        a0, b0 = before[name]
        same = torch.equal(layer.lora_A[untouched], a0[untouched]) and torch.equal(
            layer.lora_B[:, untouched], b0[:, untouched]
        )
        moved |= not same
        if strict:
            assert same, name
            exp_avg = opt.optimizers[0].state[layer.lora_A]["exp_avg"]
            assert torch.equal(exp_avg[untouched], moments[name][untouched])  # Adam moments kept too
        assert not torch.equal(layer.lora_A[b - 1], a0[b - 1]) or not torch.equal(layer.lora_B[:, b - 1], b0[:, b - 1])
    assert moved is not strict  # without strict_freeze weight decay moves untouched rows (official behaviour)


def test_export_at_every_rank_equals_evaluation_at_that_rank(tmp_path):
    from peft import PeftModel

    variant, model = build({"r": 4})
    data = token_batches(2)
    run_steps(variant, model, data, 6, cfg(lr=5e-2, wd=0.0))
    original = tiny_llama().state_dict()
    ectx = ExportContext(fresh_base=tiny_llama, task="causal-lm", modules_to_save=[])
    ids = data[0]["input_ids"]
    logits_by_rank = evaluate_over_ranks(model, lambda m: m(ids).logits, [1, 2, 3, 4])
    assert model.training  # mode and inference rank restored
    assert variant.final_ranks(model) == {n: 4 for n in adapter_layers(model, DyLoraLinear)}
    for b in (1, 2, 4):
        out = tmp_path / f"rank{b}"
        report = variant.export_at_rank(model, out, ectx, b)
        assert set(report.ranks.values()) == {b}
        merged = PeftModel.from_pretrained(tiny_llama(), str(out)).merge_and_unload().eval()
        for name, layer in adapter_layers(model, DyLoraLinear).items():
            w0 = original[f"{name}.weight"]
            diff = (merged.get_submodule(name).weight - (w0 + layer.delta_at(b))).abs().max()
            assert diff <= 1e-5 * w0.abs().max(), name
        with torch.no_grad():
            torch.testing.assert_close(merged(ids).logits, logits_by_rank[b], rtol=0, atol=1e-4)
    assert logits_by_rank[1].sub(logits_by_rank[4]).abs().max() > 1e-4  # the ranks really differ


def test_universal_export_at_the_inference_rank(tmp_path):
    from peft import PeftModel

    variant, model = build({"r": 4, "inference_rank": 3})
    run_steps(variant, model, token_batches(2), 4, cfg(lr=5e-2, wd=0.0))
    original = tiny_llama().state_dict()
    report = variant.save_adapter(
        model, tmp_path / "adapter", ExportContext(fresh_base=tiny_llama, task="causal-lm", modules_to_save=[])
    )
    assert report.exact and set(report.ranks.values()) == {3}
    merged = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "adapter")).merge_and_unload().eval()
    for name, delta in variant.delta_weights(model).items():
        w0 = original[f"{name}.weight"]
        assert (merged.get_submodule(name).weight - (w0 + delta)).abs().max() <= 1e-5 * w0.abs().max()
    model.eval()
    ids = token_batches(1, seed=9)[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, model(ids).logits, rtol=0, atol=1e-4)


def test_params_validation():
    with pytest.raises(ValueError):
        DyLora.parse_params({"r": 4, "r_min": 5})
    with pytest.raises(ValueError):
        DyLora.parse_params({"r": 4, "inference_rank": 5})
    p = DyLora.parse_params({})
    assert (p.r, p.lora_alpha, p.lora_dropout, p.mode, p.strict_freeze, p.r_min) == (8, 16.0, 0.0, "frozen", False, 1)
    assert copy.deepcopy(p) == p
