"""What each PEFT-provided variant (spec §10) adds beyond the shared matrix, plus the export helpers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from studio.errors import NotFoundError, ValidationFailed
from studio.variants.lora_export import factorise
from studio.variants.peft_common import tuner_layers
from studio.variants.registry import create_variant


def base_logits(ctx, ids):
    with torch.no_grad():
        return ctx.model.eval()(input_ids=ids).logits.clone()


IDS = torch.randint(8, 60, (2, 7), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ["pissa", "olora", "lora_ga"])
def test_mutated_inits_start_from_a_nonzero_adapter_without_changing_the_output(name, make_build_ctx):
    ctx = make_build_ctx()
    before = base_logits(ctx, IDS)
    ctx.model.train()
    variant = create_variant(name, {"lora_dropout": 0.0})
    model = variant.build(ctx).eval()
    layer = next(iter(tuner_layers(model).values()))
    assert layer.lora_B["default"].weight.abs().sum() > 0  # unlike LoRA, B0 is not zero
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, before, atol=1e-4, rtol=1e-4)
    assert (ctx.work_dir / "initial_adapter" / "adapter_model.safetensors").exists()
    # At init the adapter adds nothing relative to the original W0.
    assert max(float(d.abs().max()) for d in variant.delta_weights(model).values()) < 1e-5


@pytest.mark.parametrize("name", ["pissa", "lora_ga"])
def test_mutated_inits_save_a_portable_rank_2r_lora(name, train_tiny, tmp_path):
    result = train_tiny(name, {"r": 4, "lora_alpha": 8}, max_steps=2)
    result.variant.save_adapter(result.model, tmp_path / "a", result.export_context())
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["init_lora_weights"] is True
    assert set(result.variant.final_ranks(result.model).values()) == {8}


def test_rslora_scales_by_alpha_over_sqrt_r(make_build_ctx):
    model = create_variant("rslora", {"r": 16, "lora_alpha": 8}).build(make_build_ctx())
    layer = next(iter(tuner_layers(model).values()))
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(16))


def test_loraplus_gives_b_a_larger_learning_rate(make_build_ctx):
    from studio.variants.base import OptimConfig

    variant = create_variant("loraplus", {"loraplus_lr_ratio": 16})
    model = variant.build(make_build_ctx())
    opt = variant.configure_optimization(model, OptimConfig(1e-3, 0.0, 10, 0, "linear"))
    names = {id(p): n for n, p in model.named_parameters()}
    lrs = {}
    for group in opt.optimizers[0].param_groups:
        for p in group["params"]:
            lrs["B" if "lora_B" in names[id(p)] else "A"] = group["lr"]
    assert lrs["B"] == pytest.approx(16 * lrs["A"])


def test_dora_and_miss_are_only_approximately_plain_loras(train_tiny, tmp_path):
    for name in ("dora", "miss"):
        result = train_tiny(name, max_steps=2, learning_rate=3e-2)
        assert not result.variant.export_exact
        report = result.variant.export_plain_lora(result.model, tmp_path / name, result.export_context(), rank=1)
        assert report.max_error > 1e-3 and all(0 <= e <= 1 for e in report.errors.values())


def test_adalora_exports_only_the_kept_components(train_tiny):
    params = {"init_r": 4, "target_r": 2, "delta_t": 1, "tinit_ratio": 0.0, "tfinal_ratio": 0.25}
    result = train_tiny("adalora", params, max_steps=8)
    variant, model = result.variant, result.model
    allocation = variant.rank_allocation(model)
    assert sum(allocation.values()) == 2 * len(allocation) and max(allocation.values()) <= 4
    factors = variant.plain_lora_factors(model)
    deltas = variant.delta_weights(model)
    for name, (b, a) in factors.items():
        assert b.shape[1] == a.shape[0] == allocation[name]
        torch.testing.assert_close(b @ a, deltas[name], atol=1e-6, rtol=1e-5)


def test_eva_redistributes_ranks_and_keeps_the_total(make_build_ctx):
    ctx = make_build_ctx()
    variant = create_variant("eva", {"r": 4, "rho": 2.0})
    model = variant.build(ctx)
    allocation = variant.rank_allocation(model)
    assert len(allocation) == 14 and sum(allocation.values()) == 4 * 14
    assert max(allocation.values()) <= 8 and len(set(allocation.values())) > 1  # really redistributed


def test_eva_refuses_batches_too_short_for_its_components(make_build_ctx):
    from studio.errors import StudioError

    with pytest.raises(StudioError, match="tokens per batch"):
        create_variant("eva", {"r": 64, "rho": 2.0}).build(make_build_ctx())


def test_factorise_is_exact_at_the_true_rank_and_reports_truncation_error():
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(12, 3, generator=gen) @ torch.randn(3, 10, generator=gen)
    b, a, err = factorise(delta)
    assert b.shape == (12, 3) and a.shape == (3, 10) and err < 1e-6
    torch.testing.assert_close(b @ a, delta, atol=1e-5, rtol=1e-5)
    s = torch.linalg.svdvals(delta.double())
    _, _, err1 = factorise(delta, rank=1)
    assert err1 == pytest.approx(float(s[1:].square().sum().sqrt() / s.square().sum().sqrt()), rel=1e-6)
    zero_b, zero_a, zero_err = factorise(torch.zeros(4, 5))
    assert zero_b.shape == (4, 0) and zero_a.shape == (0, 5) and zero_err == 0.0


def test_registry_validates_names_and_parameters():
    with pytest.raises(NotFoundError, match="known variants"):
        create_variant("nope")
    with pytest.raises(ValidationFailed, match="r"):
        create_variant("lora", {"r": 0})
    with pytest.raises(ValidationFailed, match="unknown_knob"):
        create_variant("lora", {"unknown_knob": 1})
