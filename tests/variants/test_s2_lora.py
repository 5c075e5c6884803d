"""S2-LoRA (spec §8): shared storage, A_sh.grad by hand, exact zeros from the threshold, exact export."""

from __future__ import annotations

import pytest
import torch
from variant_helpers import make_ctx, tiny_llama, token_batches

from studio.variants.base import ExportContext, OptimConfig
from studio.variants.s2_lora import S2Lora, S2LoraParams

# -- helpers (the shared set-up is in variant_helpers) ---------------------------------------------------


def build(**params):
    variant = S2Lora(S2LoraParams(**{"lora_dropout": 0.0, **params}))
    torch.manual_seed(0)
    model = variant.build(make_ctx(tiny_llama()))
    return variant, model


def train(variant, model, steps: int, lr: float = 1e-2) -> None:
    cfg = OptimConfig(learning_rate=lr, weight_decay=0.0, total_steps=steps, warmup_steps=0, scheduler="constant")
    opt = variant.configure_optimization(model, cfg)
    data = token_batches(4)
    for step in range(1, steps + 1):
        loss = model(**data[step % 4]).loss + variant.extra_loss(model)
        loss.backward()
        variant.on_pre_optimizer_step(model, step)
        opt.optimizers[0].step()
        variant.on_optimizer_step(model, step)
        opt.schedulers[0].step()
        model.zero_grad(set_to_none=True)


def test_all_modules_share_storage():
    variant, model = build()
    ptr_a = {layer.factors()[0].data_ptr() for layer in variant.layers.values()}
    ptr_b = {layer.factors()[1].data_ptr() for layer in variant.layers.values()}
    assert len(ptr_a) == 1 and len(ptr_b) == 1
    assert ptr_a == {variant.bank.A["48"].data_ptr()} and ptr_b == {variant.bank.B["48"].data_ptr()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(n for n in trainable if "bank" in n) == ["s2_lora_bank.A.48", "s2_lora_bank.B.48"]
    assert len(trainable) == 2 + len(variant.layers)  # the bank once + one λ per module
    assert all(float(layer.lam.detach().abs().sum()) == 0 for layer in variant.layers.values())  # λ = 0 at init


def test_shared_grad_is_the_sum_of_per_module_contributions():
    variant, model = build(l1_weight=0.0)
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in variant.layers.values():
            layer.lam.normal_()
    seen = {}

    def keep(name):
        def hook(module, inputs, output):
            output.retain_grad()
            seen[name] = (inputs[0].detach(), output)

        return hook

    handles = [layer.register_forward_hook(keep(name)) for name, layer in variant.layers.items()]
    model(**token_batches(4)[0]).loss.backward()
    for h in handles:
        h.remove()
    r = variant.params.r
    s = variant.params.lora_alpha / r
    grad_a, grad_b = torch.zeros(r, 48), torch.zeros(48, r)
    for name, layer in variant.layers.items():
        x, out = seen[name]
        g = out.grad.reshape(-1, out.shape[-1])  # ∂L/∂(layer output) = ∂L/∂(adapter output)
        gx = g.t() @ x.reshape(-1, x.shape[-1])  # Σ_t g_t x_tᵀ  (m × n)
        a, b = layer.factors()
        lam = layer.lam.detach()
        m, n = gx.shape
        grad_a[:, :n] += s * lam[:, None] * (b.detach().t() @ gx)  # ∂/∂A of s·tr(Gᵀ B diag(λ) A)
        grad_b[:m, :] += s * (gx @ a.detach().t()) * lam[None, :]
    torch.testing.assert_close(variant.bank.A["48"].grad, grad_a, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(variant.bank.B["48"].grad, grad_b, rtol=1e-5, atol=1e-7)


def test_l1_gradient_and_threshold_gives_exact_zeros():
    variant, model = build(l1_weight=0.5, threshold=0.1, threshold_times_lr=False)  # an absolute ξ
    layer = next(iter(variant.layers.values()))
    with torch.no_grad():
        layer.lam.copy_(torch.tensor([0.05, -0.08, 0.1, 0.3, -0.25, 0.0, 1.0, -0.11]))
    variant.extra_loss(model).backward()
    torch.testing.assert_close(layer.lam.grad, 0.5 * torch.sign(layer.lam.detach()))
    variant.on_optimizer_step(model, 1)
    expected = torch.tensor([0.0, 0.0, 0.0, 0.2, -0.15, 0.0, 0.9, -0.01])
    torch.testing.assert_close(layer.lam.detach(), expected, rtol=0, atol=1e-7)
    assert int((layer.lam == 0).sum()) == 4  # exactly zero, not tiny
    assert variant.rank_allocation(model)[next(iter(variant.layers))] == 4
    with torch.no_grad():
        layer.lam.copy_(torch.tensor([0.05, -0.15, 0.25, 0.3, -0.25, 0.0, 1.0, -0.11]))
    variant.params = variant.params.model_copy(update={"threshold_mode": "official"})
    variant.on_optimizer_step(model, 1)  # official SoRA: |λ| < 2ξ → 0, else moved by ξ
    expected = torch.tensor([0.0, 0.0, 0.15, 0.2, -0.15, 0.0, 0.9, 0.0])
    torch.testing.assert_close(layer.lam.detach(), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("sharing", ["sliced", "per_shape"])
def test_delta_weight_formula(sharing):
    variant, model = build(sharing=sharing)
    torch.manual_seed(2)
    for layer in variant.layers.values():
        with torch.no_grad():
            layer.lam.normal_()
        n, m = layer.in_features, layer.out_features
        bank_a = variant.bank.A["48" if sharing == "sliced" else str(n)].detach()
        bank_b = variant.bank.B["48" if sharing == "sliced" else str(m)].detach()
        expected = 2.0 * sum(layer.lam[i].item() * torch.outer(bank_b[:m, i], bank_a[i, :n]) for i in range(8))
        torch.testing.assert_close(layer.delta_weight(), expected, rtol=1e-5, atol=1e-7)


def test_universal_export_with_sparse_and_all_zero_modules(tmp_path):
    from peft import PeftModel

    variant, model = build(l1_weight=1e-3, threshold=0.3, threshold_times_lr=True)
    train(variant, model, 6, lr=5e-2)
    names = list(variant.layers)
    assert any(layer.nnz() == 0 for layer in variant.layers.values())  # the threshold emptied some modules
    sparse = max(names[1:], key=lambda n: variant.layers[n].nnz())
    with torch.no_grad():
        variant.layers[names[0]].lam.zero_()  # a module with no survivors is dropped
        variant.layers[sparse].lam[:5] = 0.0  # a sparse one exports at rank nnz ≤ 3
    ectx = ExportContext(fresh_base=tiny_llama, task="causal-lm", modules_to_save=[])
    report = variant.export_plain_lora(model, tmp_path / "lora", ectx)
    assert names[0] not in report.ranks
    assert report.ranks[sparse] == variant.layers[sparse].nnz() and 1 <= report.ranks[sparse] <= 3
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


@pytest.mark.parametrize("learning_rate", [1e-2, 2e-4])  # the tests' lr and the studio's default lr
def test_default_threshold_makes_coefficients_exactly_zero_in_a_short_run(train_tiny, learning_rate):
    from studio.progress import MemoryReporter

    reporter = MemoryReporter()
    result = train_tiny("s2_lora", reporter=reporter, max_steps=20, learning_rate=learning_rate)
    variant = result.variant
    assert variant.params == S2LoraParams()  # nothing set: the defaults
    lams = torch.cat([layer.lam.detach() for layer in variant.layers.values()])
    zeros = int((lams == 0).sum())
    assert 0 < zeros < lams.numel()  # sparse, not dead: some coefficients survive
    ranks = variant.final_ranks(result.model)
    assert sum(ranks.values()) == lams.numel() - zeros
    assert min(ranks.values()) < variant.params.r  # the rank chart shows less than the full rank
    last = max(step for step, _, _ in reporter.rank_rows)
    logged = {module: rank for step, module, rank in reporter.rank_rows if step == last}
    assert logged == ranks
