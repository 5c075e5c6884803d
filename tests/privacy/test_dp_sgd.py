"""DP-SGD step (spec composition.md §4): vmap per-sample grads, clipping, σ=0/C=∞ equals SGD, FFA, no silent no-op."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from dp_models import encoded_rows, tiny_lora

from studio.privacy.dp_sgd import DPConfig, SilentNoOpError, dp_step, make_dp_trainer
from studio.privacy.per_sample import clip_factors, clipped_sum, mask_style, per_sample_grads, trainable_parameters
from studio.privacy.sampling import make_generator, poisson_sample
from studio.training.data import collate
from studio.training.losses import loss_sum


def row_loss(model, row):
    """The per-sample loss the long way: the studio's loss on the row alone (unpadded), over its target count."""
    batch = collate([row], pad_id=0)
    total, _ = loss_sum(model, batch, "causal-lm")
    return total / (batch["labels"][:, 1:] != -100).sum()


def loop_grads(model, rows):
    """Per-example gradients by one backward pass per row."""
    out = []
    for row in rows:
        model.zero_grad(set_to_none=True)
        row_loss(model, row).backward()
        out.append({n: p.grad.detach().clone() for n, p in trainable_parameters(model).items()})
    model.zero_grad(set_to_none=True)
    return out


def test_vmap_grads_equal_a_per_example_loop(model, rows):
    batch = collate(rows, pad_id=0)  # right-padded: rows have different lengths
    assert (batch["attention_mask"] == 0).any()
    grads, losses = per_sample_grads(model, batch, "causal-lm", causal=mask_style(model, batch))
    expected = loop_grads(model, rows)
    assert set(grads) == set(expected[0]) and all("lora_" in n for n in grads)
    for i, want in enumerate(expected):
        assert float(losses[i]) == pytest.approx(float(row_loss(model, rows[i]).detach()), abs=1e-5)
        for name, g in want.items():
            assert torch.allclose(grads[name][i], g, atol=1e-5, rtol=1e-4), (i, name)
    assert any(float(g.abs().max()) > 1e-4 for g in expected[0].values())  # the comparison is not 0 == 0


def test_chunked_vmap_gives_the_same_grads(model, rows):
    batch = collate(rows, pad_id=0)
    full, _ = per_sample_grads(model, batch, "causal-lm", causal=True)
    chunked, _ = per_sample_grads(model, batch, "causal-lm", causal=True, chunk_size=2)
    for name in full:
        assert torch.allclose(full[name], chunked[name], atol=1e-6)


def test_mask_style_finds_the_decoder_causal(model, rows):
    assert mask_style(model, collate(rows, pad_id=0)) is True


@pytest.mark.parametrize("clip", [0.05, 0.5])
def test_every_clipped_per_sample_norm_is_at_most_c(model, rows, clip):
    grads, _ = per_sample_grads(model, collate(rows, pad_id=0), "causal-lm", causal=True)
    factors = clip_factors(torch.stack([sum(g[i].pow(2).sum() for g in grads.values()).sqrt() for i in range(6)]), clip)
    clipped_norms = torch.stack(
        [sum((factors[i] * g[i]).pow(2).sum() for g in grads.values()).sqrt() for i in range(len(rows))]
    )
    assert (clipped_norms <= clip + 1e-6).all()
    summed, norms = clipped_sum(grads, clip)
    if clip == 0.05:
        assert (norms > clip).all()  # every sample was really clipped: the bound is tested, not trivially met
    # samples under C are untouched; the sum is that of the scaled samples
    assert torch.equal(factors[norms < clip], torch.ones_like(factors[norms < clip]))
    name = next(iter(grads))
    assert torch.allclose(summed[name], (factors[:, None, None] * grads[name]).sum(0), atol=1e-6)


def test_sigma_zero_and_no_clipping_equal_plain_sgd(rows):
    dp_model = tiny_lora(seed=1)
    sgd_model = copy.deepcopy(dp_model)
    before = {n: p.detach().clone() for n, p in trainable_parameters(dp_model).items()}
    dp_opt = torch.optim.SGD(trainable_parameters(dp_model).values(), lr=0.5)
    sgd_opt = torch.optim.SGD(trainable_parameters(sgd_model).values(), lr=0.5)
    config = DPConfig(noise_multiplier=0.0, max_grad_norm=math.inf, sample_rate=1.0, seed=0)
    dp_step(dp_model, dp_opt, collate(rows, 0), config, float(len(rows)), make_generator(0))

    loss = sum(row_loss(sgd_model, row) for row in rows) / len(rows)
    loss.backward()
    sgd_opt.step()
    moved = 0.0
    for (name, p), q in zip(trainable_parameters(dp_model).items(), trainable_parameters(sgd_model).values(), strict=True):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), name
        moved = max(moved, float((p.detach() - before[name]).abs().max()))
    assert moved > 1e-3


def test_noise_has_std_sigma_c_over_l(model):
    """An empty step is noise only: its update's std is σ·C/L (times lr)."""
    before = {n: p.detach().clone() for n, p in trainable_parameters(model).items()}
    opt = torch.optim.SGD(trainable_parameters(model).values(), lr=1.0)
    config = DPConfig(noise_multiplier=2.0, max_grad_norm=0.5, sample_rate=0.5)
    dp_step(model, opt, None, config, expected_batch_size=4.0, generator=make_generator(3))
    deltas = torch.cat([(before[n] - p.detach()).flatten() for n, p in trainable_parameters(model).items()])
    assert deltas.numel() > 4000
    assert float(deltas.std()) == pytest.approx(2.0 * 0.5 / 4.0, rel=0.05)
    assert abs(float(deltas.mean())) < 0.01


def test_ffa_trains_b_only_and_leaves_a(rows):
    model = tiny_lora(freeze_a=True)
    a_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}
    b_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    grads, _ = per_sample_grads(model, collate(rows, 0), "causal-lm", causal=True)
    assert grads and all("lora_B" in n for n in grads)
    opt = torch.optim.SGD(trainable_parameters(model).values(), lr=0.1)
    trainer = make_dp_trainer(
        model, opt, rows, pad_id=0, noise_multiplier=0.5, max_grad_norm=1.0, batch_size=3, seed=0
    )
    trainer.run(2)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], a) for n, a in a_before.items())
    assert any(not torch.equal(params[n], b) for n, b in b_before.items())


def test_a_step_that_moves_nothing_is_refused(model, rows):
    """The spec's warning: an optimizer that does not hold the live tensors makes DP-SGD a silent no-op."""
    stale = [p.detach().clone().requires_grad_(True) for p in trainable_parameters(model).values()]
    trainer = make_dp_trainer(
        model, torch.optim.SGD(stale, lr=0.1), rows, pad_id=0, noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=1.0
    )
    with pytest.raises(SilentNoOpError, match="changed no trainable weight"):
        trainer.step()


def test_poisson_sampler_is_seeded_and_has_rate_q():
    first = [poisson_sample(1000, 0.05, g) for g in [make_generator(7)] for _ in range(3)]
    again = [poisson_sample(1000, 0.05, g) for g in [make_generator(7)] for _ in range(3)]
    assert first == again and first[0] != first[1]
    sizes = [len(poisson_sample(1000, 0.05, make_generator(s))) for s in range(40)]
    assert 45 < sum(sizes) / len(sizes) < 55 and len(set(sizes)) > 3  # varies around L = q·n
    assert all(0 <= i < 1000 for i in first[0]) and len(set(first[0])) == len(first[0])


def test_dp_steps_lower_the_loss_on_a_toy_task():
    """Small σ, C = 1: a few DP-Adam steps on 16 rows lower their loss."""
    model = tiny_lora(seed=2)
    data = encoded_rows(16, seed=5, min_len=8, max_len=8)

    def mean_loss():
        with torch.no_grad():
            return float(sum(row_loss(model, r) for r in data) / len(data))

    start = mean_loss()
    opt = torch.optim.Adam(trainable_parameters(model).values(), lr=0.01)
    trainer = make_dp_trainer(
        model, opt, data, pad_id=0, noise_multiplier=0.3, max_grad_norm=1.0, batch_size=8, seed=0
    )
    results = trainer.run(15)
    assert sum(r.rows for r in results) > 0
    assert mean_loss() < start - 0.05
    assert trainer.ledger.steps == 15 and 0 < trainer.epsilon() < math.inf
