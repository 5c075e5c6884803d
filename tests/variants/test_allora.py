"""ALLoRA (spec §4): no dropout, no scaling, norm-adaptive multiplier applied after the optimizer."""

from __future__ import annotations

import math

import pytest
import torch
from variant_helpers import build_variant, engine_step, optimization, tiny_llama, token_batches

from studio.variants.allora import Allora, lora_matrices, norm_multiplier
from studio.variants.base import ExportContext, OptimConfig, default_optimization
from studio.variants.peft_common import tuner_layers

# -- helpers (the shared set-up is in variant_helpers) ---------------------------------------------------


def build(params: dict | None = None, seed: int = 0):
    variant = Allora(Allora.parse_params(params or {}))
    return variant, build_variant(variant, tiny_llama(), seed=seed)


def config(lr: float = 1e-2, wd: float = 0.0, total: int = 10) -> OptimConfig:
    return OptimConfig(learning_rate=lr, weight_decay=wd, total_steps=total, warmup_steps=0, scheduler="constant")


# -- tests -------------------------------------------------------------------------------------------


def test_multiplier_by_hand():
    theta = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    eta = 2.0  # 1/η² = 0.25
    rows = norm_multiplier(theta, eta, "row")
    torch.testing.assert_close(rows.flatten(), torch.tensor([1 / math.sqrt(25.25), 2.0, 1 / math.sqrt(1.25)]))
    cols = norm_multiplier(theta, eta, "column")
    torch.testing.assert_close(cols.flatten(), torch.tensor([1 / math.sqrt(10.25), 1 / math.sqrt(16.25)]))
    whole = norm_multiplier(theta, eta, "tensor")
    torch.testing.assert_close(whole.flatten(), torch.tensor([1 / math.sqrt(26.25)]))
    assert float(norm_multiplier(torch.zeros(2, 3), 5.0, "row")[0, 0]) == 5.0  # η at θ = 0


@pytest.mark.parametrize("granularity", ["row", "column", "tensor"])
def test_step_at_zero_is_lr_eta_u_and_scaled_elsewhere(granularity):
    eta, lr = 3.0, 1e-2
    variant, model = build({"r": 4, "eta": eta, "granularity": granularity})
    _, reference = build({"r": 4, "eta": eta, "granularity": granularity})  # plain AdamW gives the optimizer's u
    cfg = config(lr=lr, wd=0.1)
    opt, ref_opt = (
        optimization(variant, model, cfg),
        default_optimization([p for p in reference.parameters() if p.requires_grad], cfg),
    )
    batch = token_batches(1)[0]
    mats, ref_mats = lora_matrices(model), lora_matrices(reference)
    before = {n: {k: p.detach().clone() for k, p in m.items()} for n, m in mats.items()}
    engine_step(variant, model, opt, batch, 1)
    reference(**batch).loss.backward()
    ref_opt.optimizers[0].step()
    for name, m in mats.items():
        for key in ("A", "B"):
            old = before[name][key]
            plain_step = ref_mats[name][key].detach() - old  # = −lr·u (AdamW incl. decay)
            taken = m[key].detach() - old
            c = norm_multiplier(old, eta, granularity)
            torch.testing.assert_close(taken, c * plain_step, rtol=1e-4, atol=1e-9)
            if key == "B":  # B = 0 at init: the step is exactly η times the optimizer's
                assert torch.count_nonzero(old) == 0
                torch.testing.assert_close(taken, eta * plain_step, rtol=1e-5, atol=1e-10)
                # by hand: Adam's first step is u = g/(|g| + ε) (no decay at θ = 0), so Δ = −lr·η·u
                g = ref_mats[name][key].grad
                torch.testing.assert_close(taken, -lr * eta * g / (g.abs() + 1e-8), rtol=1e-4, atol=1e-9)
                assert taken.abs().max() > 0
    assert variant.rank_extra(model)[name]["mean_c_B"] == pytest.approx(eta)


def test_dropout_is_identity_and_there_is_no_scaling():
    variant, model = build({"r": 4})
    assert variant.params.lora_alpha == 4 and variant.params.lora_dropout == 0.0
    for layer in tuner_layers(model).values():
        assert isinstance(layer.lora_dropout["default"], torch.nn.Identity)
        assert layer.scaling["default"] == 1.0
        with torch.no_grad():
            layer.lora_B["default"].weight.normal_()
    ids = token_batches(1)[0]["input_ids"]
    model.train()
    train_logits = model(ids).logits
    model.eval()
    torch.testing.assert_close(train_logits, model(ids).logits, rtol=0, atol=0)
    with pytest.raises(ValueError):
        Allora.parse_params({"r": 4, "lora_alpha": 8})
    with pytest.raises(ValueError):
        Allora.parse_params({"lora_dropout": 0.1})


def test_universal_export(tmp_path):
    from peft import PeftModel

    variant, model = build({"r": 4, "eta": 2.0})
    cfg = config(lr=2e-2)
    opt = optimization(variant, model, cfg)
    for step, batch in enumerate(token_batches(3), start=1):
        engine_step(variant, model, opt, batch, step)
    original = tiny_llama().state_dict()
    report = variant.save_adapter(
        model, tmp_path / "adapter", ExportContext(fresh_base=tiny_llama, task="causal-lm", modules_to_save=[])
    )
    assert report.exact
    merged = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "adapter")).merge_and_unload().eval()
    deltas = variant.delta_weights(model)
    for name, m in lora_matrices(model).items():
        torch.testing.assert_close(deltas[name], m["B"].detach() @ m["A"].detach())  # B A, no scaling
        w0 = original[f"{name}.weight"]
        assert (merged.get_submodule(name).weight - (w0 + deltas[name])).abs().max() <= 1e-5 * w0.abs().max()
    model.eval()
    ids = token_batches(1, seed=9)[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, model(ids).logits, rtol=0, atol=1e-4)
