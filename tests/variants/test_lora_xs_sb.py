"""LoRA-XS and LoRA-SB (spec §6): SVD / gradient inits, only R trains, exact plain-LoRA export."""

from __future__ import annotations

import copy

import pytest
import torch
from variant_helpers import check_universal_export, tiny_llama, token_batches
from variant_helpers import make_ctx as shared_ctx

from studio.variants._core_matrix import core_layers, truncated_svd
from studio.variants.base import BuildContext
from studio.variants.lora_sb import LoraSb
from studio.variants.lora_xs import LoraXs

# -- helpers (the shared set-up is in variant_helpers) ---------------------------------------------------


def make_ctx(model, batches, logs=None, lr=1e-3, warmup=4, seed=0) -> BuildContext:
    """Seeds torch, then a BuildContext calibrating on ``batches`` (quiet unless ``logs`` collects the messages)."""
    torch.manual_seed(seed)
    log = logs.append if logs is not None else (lambda _msg: None)
    return shared_ctx(model, calibration=batches, seed=seed, lr=lr, warmup=warmup, log=log)


def train_steps(model, batches, steps: int = 3, lr: float = 5e-2) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for i in range(steps):
        loss = model(**batches[i % len(batches)]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()


# -- shared SVD helper ----------------------------------------------------------------------------------


def test_randomized_svd_matches_exact_svd():
    g = torch.Generator().manual_seed(3)
    # A decaying spectrum, as in trained weights: the randomised SVD converges to the exact one.
    u, _ = torch.linalg.qr(torch.randn(40, 40, generator=g))
    v, _ = torch.linalg.qr(torch.randn(30, 30, generator=g))
    sigma = 0.8 ** torch.arange(30.0)
    m = (u[:, :30] * sigma) @ v.T
    ur, sr, vr = truncated_svd(m, 5)
    assert torch.allclose(sr, sigma[:5], rtol=1e-4)
    assert torch.allclose(ur.T @ ur, torch.eye(5), atol=1e-5)
    assert torch.allclose(vr @ vr.T, torch.eye(5), atol=1e-5)
    best = m - (u[:, :5] * sigma[:5]) @ v[:, :5].T
    assert torch.allclose(m - (ur * sr) @ vr, best, atol=1e-5)
    # Deterministic: same seed → identical factors; signs fixed (largest |entry| of each Vᵀ row > 0).
    again = truncated_svd(m, 5)
    assert all(torch.equal(x, y) for x, y in zip((ur, sr, vr), again, strict=True))
    assert bool((vr.gather(1, vr.abs().argmax(1, keepdim=True)) > 0).all())


# -- LoRA-XS ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("svd_method", ["randomized", "exact"])
def test_lora_xs_init_is_truncated_svd_of_w0(svd_method):
    model = tiny_llama()
    original = copy.deepcopy(model.state_dict())
    variant = LoraXs(LoraXs.Params(r=6, svd_method=svd_method))
    variant.build(make_ctx(model, token_batches(1)))
    layers = core_layers(model)
    assert len(layers) == 2 * 7
    for name, layer in layers.items():
        w0 = original[f"{name}.weight"]
        assert torch.equal(layer.base_layer.weight, w0)  # W0 unchanged
        sigma = torch.linalg.svdvals(w0.double())
        a, b, core = layer.lora_A.double(), layer.lora_B.double(), layer.lora_core.detach()
        # Rows of A orthogonal with norms σ_i: A Aᵀ = diag(σ_1², ..., σ_r²).
        assert torch.allclose(a @ a.T, torch.diag(sigma[:6] ** 2), atol=1e-5 * float(sigma[0] ** 2))
        assert torch.allclose(b.T @ b, torch.eye(6, dtype=torch.float64), atol=1e-5)
        # B A is the best rank-r approximation of W0 (Eckart-Young residual).
        residual = float(((w0.double() - b @ a) ** 2).sum())
        assert residual == pytest.approx(float((sigma[6:] ** 2).sum()), rel=1e-3, abs=1e-9)
        # R ~ N(0, (1e-5)²): tiny but not zero, so ΔW at init is tiny but not zero.
        assert 0 < float(core.abs().max()) < 1e-4
        assert 0.3e-5 < float(core.std()) < 3e-5
    assert variant.params.lora_alpha is None and layer.scaling == 1.0  # official α = r


def test_lora_xs_only_r_gets_gradient():
    model = tiny_llama()
    batches = token_batches(1)
    variant = LoraXs(LoraXs.Params(r=4))
    model = variant.build(make_ctx(model, batches))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith("lora_core") for n in trainable)
    model(**batches[0]).loss.backward()
    for name, param in model.named_parameters():
        if name.endswith("lora_core"):
            assert param.grad is not None and float(param.grad.abs().sum()) > 0, name
        else:
            assert param.grad is None, name


def test_lora_xs_universal_export(tmp_path):
    model = tiny_llama()
    original = copy.deepcopy(model.state_dict())
    batches = token_batches(2)
    variant = LoraXs(LoraXs.Params(r=4, lora_alpha=8.0))
    model = variant.build(make_ctx(model, batches))
    train_steps(model, batches)
    ranks = check_universal_export(variant, model, original, tmp_path, tiny_llama)
    assert set(ranks.values()) == {4}
    # Exact factors: A′ = A, B′ = s·B·R.
    for name, (b, a) in variant.plain_lora_factors(model).items():
        layer = core_layers(model)[name]
        assert torch.equal(a, layer.lora_A.detach())
        assert torch.allclose(b, 2.0 * layer.lora_B.detach() @ layer.lora_core.detach())


# -- LoRA-SB ----------------------------------------------------------------------------------------------


def hand_gradients(model, batches, names) -> dict:
    """Σg for grad_samples = 3 over batches of 2: batch 0 whole (loss / 2), then 1 sample of batch 1."""
    weights = [model.get_submodule(n).weight for n in names]
    first = model(**batches[0]).loss / 2
    second = model(**{k: v[:1] for k, v in batches[1].items()}).loss / 1
    g1 = torch.autograd.grad(first, weights)
    g2 = torch.autograd.grad(second, weights)
    return {n: a + b for n, a, b in zip(names, g1, g2, strict=True)}


@pytest.mark.parametrize("svd_method", ["randomized", "exact"])
def test_lora_sb_init_is_best_rank_r_first_adam_step(svd_method):
    model = tiny_llama()
    original = copy.deepcopy(model.state_dict())
    batches = token_batches(4)
    names = sorted(n.removesuffix(".weight") for n in original if n.endswith("proj.weight"))
    expected_grads = hand_gradients(tiny_llama(), batches, names)
    logs: list[str] = []
    r, lr, warmup = 5, 2e-3, 4
    variant = LoraSb(LoraSb.Params(r=r, grad_samples=3, svd_method=svd_method))
    variant.build(make_ctx(model, batches, logs=logs, lr=lr, warmup=warmup))
    assert any("gradient estimation on 3 samples" in line for line in logs), logs
    layers = core_layers(model)
    assert sorted(layers) == names
    for name, layer in layers.items():
        assert torch.equal(layer.base_layer.weight, original[f"{name}.weight"])  # W0 not changed
        a, b = layer.lora_A.double(), layer.lora_B.double()
        assert torch.allclose(b.T @ b, torch.eye(r, dtype=torch.float64), atol=1e-5)
        assert torch.allclose(a @ a.T, torch.eye(r, dtype=torch.float64), atol=1e-5)
        # ΔW₁ = −(lr / warmup)·sign(Σg); its exact SVD gives the discarded energy.
        delta1 = -(lr / warmup) * torch.sign(expected_grads[name]).double()
        sigma = torch.linalg.svdvals(delta1)
        discarded = float((sigma[r:] ** 2).sum())
        approx = layer.scaling * b @ layer.lora_core.double() @ a
        assert float(((delta1 - approx) ** 2).sum()) == pytest.approx(discarded, rel=2e-3)
        # R = Σ_r / s with s = 1: the top singular values of ΔW₁.
        assert torch.allclose(torch.diagonal(layer.lora_core).double(), sigma[:r], rtol=2e-3)


def test_lora_sb_scale_and_warmup_conventions():
    model = tiny_llama()
    batches = token_batches(2)
    variant = LoraSb(LoraSb.Params(r=3, lora_alpha=6.0, grad_samples=2))
    variant.build(make_ctx(model, batches, lr=1e-3, warmup=0))  # no warmup: η₁ = lr
    layer = core_layers(model)["model.layers.0.self_attn.q_proj"]
    assert layer.scaling == 2.0
    sigma = torch.linalg.svdvals(layer.scaling * layer.lora_B @ layer.lora_core @ layer.lora_A)
    # Every entry of ΔW₁ is ±η₁, so ‖ΔW₁‖_F² = η₁²·m·n bounds the kept energy; R = Σ / s.
    assert float((sigma**2).sum()) <= (1e-3) ** 2 * 32 * 32 * (1 + 1e-4)
    assert torch.allclose(torch.diagonal(layer.lora_core) * 2.0, sigma[:3], rtol=1e-4)


def test_lora_sb_only_r_gets_gradient_and_state_roundtrip():
    model = tiny_llama()
    batches = token_batches(2)
    variant = LoraSb(LoraSb.Params(r=4, grad_samples=2))
    model = variant.build(make_ctx(model, batches))
    assert all(not p.requires_grad or n.endswith("lora_core") for n, p in model.named_parameters())
    model(**batches[0]).loss.backward()
    for name, param in model.named_parameters():
        if name.endswith("lora_core"):
            assert param.grad is not None and float(param.grad.abs().sum()) > 0, name
        else:
            assert param.grad is None, name
    # Checkpoint extras carry the frozen A, B; loading them reproduces the factors exactly.
    state = variant.state_dict_extra(model)
    assert len(state) == 2 * 2 * 7
    other = LoraSb(LoraSb.Params(r=4, grad_samples=1)).build(make_ctx(tiny_llama(), batches))
    LoraSb(LoraSb.Params(r=4)).load_state_dict_extra(other, state)
    for name, layer in core_layers(other).items():
        assert torch.equal(layer.lora_A, core_layers(model)[name].lora_A)
        assert torch.equal(layer.lora_B, core_layers(model)[name].lora_B)


def test_lora_sb_universal_export(tmp_path):
    model = tiny_llama()
    original = copy.deepcopy(model.state_dict())
    batches = token_batches(2)
    variant = LoraSb(LoraSb.Params(r=4, grad_samples=4))
    model = variant.build(make_ctx(model, batches))
    train_steps(model, batches)
    ranks = check_universal_export(variant, model, original, tmp_path, tiny_llama)
    assert set(ranks.values()) == {4}


def test_rank_clamped_to_small_layers():
    model = tiny_llama()
    variant = LoraXs(LoraXs.Params(r=20))  # k_proj / v_proj are 16 × 32
    variant.build(make_ctx(model, token_batches(1)))
    ranks = variant.final_ranks(model)
    assert ranks["model.layers.0.self_attn.k_proj"] == 16
    assert ranks["model.layers.0.self_attn.q_proj"] == 20
