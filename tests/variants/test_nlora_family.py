"""SLoRA / NLoRA / IntTune (spec §7): middle matrix N, Nyström init, residual option, exact export."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from variant_helpers import check_universal_export, token_batches
from variant_helpers import make_ctx as shared_ctx
from variant_helpers import tiny_llama as shared_llama

from studio.variants._core_matrix import core_layers
from studio.variants.base import BuildContext
from studio.variants.inttune import IntTune
from studio.variants.nlora import Nlora
from studio.variants.slora import Slora

# -- helpers (the shared set-up is in variant_helpers) ---------------------------------------------------


def tiny_llama(seed: int = 0, classification: bool = False):
    """The shared tiny Llama, configured for 3 classes (the head of the classification tests)."""
    return shared_llama(seed, task="classification" if classification else "causal-lm", num_labels=3)


def make_ctx(model, batches, task="causal-lm", heads=(), logs=None) -> BuildContext:
    """Seeds torch, then a quiet BuildContext calibrating on ``batches`` (``logs`` collects the messages)."""
    torch.manual_seed(0)
    log = logs.append if logs is not None else (lambda _msg: None)
    return shared_ctx(model, task=task, heads=heads, calibration=batches, lr=1e-3, warmup=2, log=log)


def train_steps(model, batches, steps: int = 3, lr: float = 1e-2) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    for i in range(steps):
        model(**batches[i % len(batches)]).loss.backward()
        opt.step()
        opt.zero_grad()


# -- NLoRA ----------------------------------------------------------------------------------------------


def test_nlora_init_slices_equal_w0_blocks():
    model = tiny_llama()
    original = copy.deepcopy(model.state_dict())
    assert not Nlora.Params().residual  # the official init is the default
    variant = Nlora(Nlora.Params(r=4, lora_alpha=8.0, residual=False))
    variant.build(make_ctx(model, token_batches(1)))
    layers = core_layers(model)
    assert len(layers) == 14
    deltas = variant.delta_weights(model)
    for name, layer in layers.items():
        w0 = original[f"{name}.weight"]
        assert torch.equal(layer.base_layer.weight, w0)  # official: W0 unchanged
        assert torch.equal(layer.lora_A, w0[:4, :])
        assert torch.equal(layer.lora_B, w0[:, :4])
        assert torch.equal(layer.lora_core, w0[:4, :4])
        # ΔW at init = s · W0[:, :r] W0[:r, :r] W0[:r, :]: small but not zero.
        expected = 2.0 * w0[:, :4] @ w0[:4, :4] @ w0[:4, :]
        assert torch.allclose(deltas[name], expected, atol=1e-9)
        assert 0 < float(deltas[name].abs().max()) < 0.01 * float(w0.abs().max())
    assert all(
        p.requires_grad == any(n.endswith(f) for f in ("lora_A", "lora_B", "lora_core"))
        for n, p in model.named_parameters()
    )


def test_nlora_pinv_core_is_textbook_nystrom():
    # On a weight of exact rank r whose r × r corner is invertible, C·W11⁺·R reproduces W exactly.
    model = tiny_llama()
    layer_name = "model.layers.0.mlp.up_proj"  # 48 × 32
    g = torch.Generator().manual_seed(5)
    low_rank = torch.randn(48, 3, generator=g) @ torch.randn(3, 32, generator=g) * 0.1
    model.get_submodule(layer_name).weight.data.copy_(low_rank)
    variant = Nlora(Nlora.Params(r=3, lora_alpha=3.0, core="pinv", residual=False))
    variant.build(make_ctx(model, token_batches(1)))
    layer = core_layers(model)[layer_name]
    assert torch.allclose(layer.lora_core, torch.linalg.pinv(low_rank[:3, :3].double()).float(), rtol=1e-5)
    assert torch.allclose(variant.delta_weights(model)[layer_name], low_rank, atol=1e-5)


@pytest.mark.parametrize(("cls", "core"), [(Nlora, "block"), (Nlora, "pinv"), (IntTune, "block")])
def test_residual_starts_at_the_base_and_exports_rank_2r(cls, core, tmp_path):
    model = tiny_llama()
    original = copy.deepcopy(model.state_dict())
    batches = token_batches(2)
    ids = batches[0]["input_ids"]
    with torch.no_grad():
        base_logits = model.eval()(input_ids=ids).logits
    model.train()
    variant = cls(cls.Params(r=4, residual=True, core=core))
    model = variant.build(make_ctx(model, batches))
    for name, layer in core_layers(model).items():
        w0 = original[f"{name}.weight"].double()
        corner = w0[:4, :4] if core == "block" else torch.linalg.pinv(w0[:4, :4])
        # W0 ← W0 − s·B0·N0·A0 (s = 128 / 4 = 32 with the official α = 128).
        expected = w0 - 32.0 * w0[:, :4] @ corner @ w0[:4, :]
        assert torch.allclose(layer.base_layer.weight.double(), expected, atol=1e-5 * float(expected.abs().max()))
    with torch.no_grad():
        # The pinv core makes s·B0·N0·A0 as large as W0 itself: the subtraction really matters.
        assert torch.allclose(model.eval()(input_ids=ids).logits, base_logits, atol=1e-4)
        # ΔW relative to the original W0 is zero up to fp32 cancellation of s·B·N·A − s·B0·N0·A0.
        for name, delta in variant.delta_weights(model).items():
            layer = core_layers(model)[name]
            full = layer.scaling * layer.lora_B @ layer.lora_core @ layer.lora_A
            assert float(delta.abs().max()) <= 1e-6 * float(full.abs().max()) + 1e-12, name
    model.train()
    train_steps(model, batches)
    ranks = check_universal_export(variant, model, original, tmp_path, tiny_llama)
    assert set(ranks.values()) == {8}
    assert set(variant.final_ranks(model).values()) == {8}


def test_inttune_only_n_gets_gradient():
    model = tiny_llama()
    batches = token_batches(1)
    variant = IntTune(IntTune.Params(r=4, residual=False))  # the official init
    model = variant.build(make_ctx(model, batches))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith("lora_core") for n in trainable)
    model(**batches[0]).loss.backward()
    for name, param in model.named_parameters():
        if name.endswith("lora_core"):
            assert param.grad is not None and float(param.grad.abs().sum()) > 0, name
        else:
            assert param.grad is None, name
    # Same init as NLoRA.
    layer = core_layers(model)["model.layers.1.mlp.down_proj"]
    assert torch.equal(layer.lora_core, layer.base_layer.weight[:4, :4])


def test_nlora_trains_a_n_b():
    model = tiny_llama()
    batches = token_batches(1)
    model = Nlora(Nlora.Params(r=4)).build(make_ctx(model, batches))
    model(**batches[0]).loss.backward()
    for layer in core_layers(model).values():
        for factor in (layer.lora_A, layer.lora_core, layer.lora_B):
            assert factor.grad is not None and float(factor.grad.abs().sum()) > 0
        assert layer.base_layer.weight.grad is None


# -- SLoRA ----------------------------------------------------------------------------------------------


def test_slora_init_kaiming_a_n_zero_b():
    model = tiny_llama()
    variant = Slora(Slora.Params(r=8))
    model = variant.build(make_ctx(model, token_batches(1)))
    for name, layer in core_layers(model).items():
        n = layer.in_features
        assert torch.equal(layer.lora_B, torch.zeros_like(layer.lora_B))
        # kaiming_uniform(a=√5) = U(−1/√fan_in, 1/√fan_in): fan_in = n for A, r for N.
        for factor, fan_in in ((layer.lora_A, n), (layer.lora_core, 8)):
            bound = 1 / math.sqrt(fan_in)
            assert float(factor.detach().abs().max()) <= bound
            assert float(factor.detach().std()) == pytest.approx(bound / math.sqrt(3), rel=0.3)
        assert float(variant.delta_weights(model)[name].abs().max()) == 0.0
        assert all(f.requires_grad for f in (layer.lora_A, layer.lora_core, layer.lora_B))
    assert layer.scaling == 16.0  # s = α / r with the official α = 128


# -- universal export ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "params"),
    [
        (Slora, {}),
        (Nlora, {"residual": False}),  # official; the residual form is tested above
        (Nlora, {"core": "pinv", "lora_alpha": 1.0, "residual": False}),
        (IntTune, {"residual": False}),
    ],
)
def test_universal_export(cls, params, tmp_path):
    model = tiny_llama()
    original = copy.deepcopy(model.state_dict())
    batches = token_batches(2)
    variant = cls(cls.Params(r=4, **params))
    model = variant.build(make_ctx(model, batches))
    train_steps(model, batches)
    ranks = check_universal_export(variant, model, original, tmp_path, tiny_llama)
    assert set(ranks.values()) == {4}
    for name, (b, a) in variant.plain_lora_factors(model).items():  # A′ = A, B′ = s·B·N
        layer = core_layers(model)[name]
        assert torch.equal(a, layer.lora_A.detach())
        assert torch.allclose(b, layer.scaling * layer.lora_B.detach() @ layer.lora_core.detach())


def test_classification_head_is_trained_and_exported(tmp_path):
    model = tiny_llama(classification=True)
    original = copy.deepcopy(model.state_dict())
    batches = token_batches(2, classes=3)
    variant = Nlora(Nlora.Params(r=4, lora_alpha=4.0))
    model = variant.build(make_ctx(model, batches, task="classification", heads=["score"]))
    assert all(p.requires_grad for p in model.score.parameters())
    train_steps(model, batches)
    assert not torch.equal(model.score.weight, original["score.weight"])
    check_universal_export(
        variant, model, original, tmp_path, lambda: tiny_llama(classification=True), "classification", ["score"]
    )


def test_rank_clamped_to_small_layers():
    logs: list[str] = []
    model = tiny_llama()
    variant = Nlora(Nlora.Params(residual=False))  # official r = 128 > every layer of the tiny model
    variant.build(make_ctx(model, token_batches(1), logs=logs))
    ranks = variant.final_ranks(model)
    assert ranks["model.layers.0.self_attn.k_proj"] == 16  # 16 × 32
    assert ranks["model.layers.0.mlp.up_proj"] == 32  # 48 × 32
    assert any("clamped" in line for line in logs)


def test_nlora_factors_train_at_a_scaled_learning_rate_heads_at_the_runs():
    from studio.variants.base import OptimConfig

    model = tiny_llama()
    variant = Nlora(Nlora.Params(r=4, lr_scale=0.1))
    assert Nlora.Params().lr_scale == 1.0 and not hasattr(IntTune.Params(), "lr_scale")  # official: one lr
    model = variant.build(make_ctx(model, token_batches(1)))
    model.lm_head.weight.requires_grad_(True)  # stands in for a trainable head (classification)
    cfg = OptimConfig(learning_rate=2e-4, weight_decay=0.0, total_steps=10, warmup_steps=0, scheduler="constant")
    optimizer = variant.configure_optimization(model, cfg).optimizers[0]
    factors, heads = optimizer.param_groups
    assert factors["lr"] == pytest.approx(2e-5) and heads["lr"] == pytest.approx(2e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith(("lora_A", "lora_core", "lora_B")) for p in factors["params"])
    assert [names[id(p)] for p in heads["params"]] == ["lm_head.weight"]


# -- presets: the official settings are the defaults, the small-model ones a named preset ------------------


@pytest.mark.parametrize("cls", [Nlora, IntTune])
def test_official_preset_is_the_default_and_small_model_preset_starts_at_the_base(cls):
    from studio.variants.registry import params_with_preset

    assert cls.Params.model_validate(params_with_preset(cls.name, "official")) == cls.Params()
    small = cls.Params.model_validate(params_with_preset(cls.name, "small-model", {"r": 4}))
    assert small.residual and small.r == 4
    assert getattr(small, "lr_scale", 0.1) == 0.1
    # what the preset is for: the official init moves the model away from the base, the residual does not
    batch = token_batches(1)[0]
    with torch.no_grad():
        base_logits = tiny_llama()(input_ids=batch["input_ids"]).logits
    for params, starts_at_base in ((cls.Params(r=4), False), (small, True)):
        model = cls(params).build(make_ctx(tiny_llama(), [batch]))
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"]).logits
        assert torch.allclose(logits, base_logits, atol=1e-4) == starts_at_base


def test_explicit_params_win_over_the_preset_and_unknown_presets_are_named():
    from studio.errors import NotFoundError
    from studio.variants.registry import params_with_preset

    assert params_with_preset("nlora", "small-model", {"lr_scale": 0.5}) == {"residual": True, "lr_scale": 0.5}
    with pytest.raises(NotFoundError, match="official, small-model"):
        params_with_preset("nlora", "tiny")
    with pytest.raises(NotFoundError, match="none"):
        params_with_preset("slora", "official")  # no presets declared
