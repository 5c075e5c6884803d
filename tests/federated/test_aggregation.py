"""Spec §3 tests of the server aggregation (pure torch, one module)."""

from __future__ import annotations

import pytest
import torch

from studio.federated import aggregation as agg


def clients(k=3, r=4, d_in=16, d_out=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = [torch.randn(r, d_in, generator=g) for _ in range(k)]
    b = [torch.randn(d_out, r, generator=g) for _ in range(k)]
    return a, b


WEIGHTS = [10, 30, 60]


def test_fedit_is_biased_for_random_clients():
    a, b = clients()
    assert agg.aggregation_bias(a, b, WEIGHTS) > 1e-3


def test_fedit_unbiased_for_identical_clients_or_shared_a():
    a, b = clients(k=1)
    assert agg.aggregation_bias(a * 3, b * 3, WEIGHTS) < 1e-10
    shared, (_, bs) = clients()[0][0], clients(seed=1)
    assert agg.aggregation_bias([shared] * 3, bs, WEIGHTS) < 1e-10


def test_fedit_weights_are_row_shares():
    a, b = clients(k=2)
    a_bar, b_bar = agg.fedit(a, b, [1, 3])
    torch.testing.assert_close(a_bar, 0.25 * a[0] + 0.75 * a[1])
    torch.testing.assert_close(b_bar, 0.25 * b[0] + 0.75 * b[1])


def test_ffa_average_is_exact():
    (a, *_), bs = clients()[0], clients(seed=2)[1]
    b_bar = agg.ffa(bs, WEIGHTS)
    want = agg.ideal_delta([a] * 3, bs, WEIGHTS)
    assert float((b_bar.double() @ a.double() - want).abs().max()) < 1e-6


def test_flora_stack_is_exact_with_different_ranks():
    g = torch.Generator().manual_seed(3)
    ranks, scales = [2, 4, 8], [2.0, 1.0, 0.5]
    a = [torch.randn(r, 16, generator=g) for r in ranks]
    b = [torch.randn(12, r, generator=g) for r in ranks]
    a_s, b_s = agg.flora_stack(a, b, WEIGHTS, scales)
    assert a_s.shape == (14, 16) and b_s.shape == (12, 14)
    want = agg.ideal_delta(a, [s * bk for s, bk in zip(scales, b, strict=True)], WEIGHTS)
    assert float((b_s.double() @ a_s.double() - want).abs().max()) < 1e-6


def test_lora_fair_improves_cosine_and_is_zero_for_identical_clients():
    a, b = clients()
    a_bar, b_new, report = agg.lora_fair(a, b, WEIGHTS)
    target = agg.ideal_delta(a, b, WEIGHTS)
    assert report.cosine_after >= report.cosine_before
    assert report.cosine_after > report.cosine_before + 1e-6  # it actually moved
    assert float(agg.cosine(target, b_new.double() @ a_bar.double())) == pytest.approx(report.cosine_after, abs=1e-9)
    assert 1 <= report.iterations <= agg.FAIR_MAX_ITERS

    one_a, one_b = clients(k=1)
    _, same_b, same = agg.lora_fair(one_a * 3, one_b * 3, WEIGHTS)
    assert float(same.delta_b.abs().max()) < 1e-8
    torch.testing.assert_close(same_b, one_b[0])


def test_lora_fair_ridge_lowers_frobenius_error():
    a, b = clients()
    a, b = [x.double() for x in a], [x.double() for x in b]  # the stationarity check below is float64-exact
    a_bar, b_bar = agg.fedit(a, b, WEIGHTS)
    target = agg.ideal_delta(a, b, WEIGHTS)
    _, b_new, report = agg.lora_fair(a, b, WEIGHTS, solver="ridge")
    before = float((b_bar.double() @ a_bar.double() - target).norm())
    after = float((b_new.double() @ a_bar.double() - target).norm())
    assert after < before
    # the ridge solution is a stationary point of ‖(B̄+ΔB)Ā − ΔW*‖² + λ‖ΔB‖²
    delta = report.delta_b.double().requires_grad_(True)
    loss = ((b_bar.double() + delta) @ a_bar.double() - target).square().sum() + agg.FAIR_LAMBDA * delta.square().sum()
    loss.backward()
    assert float(delta.grad.abs().max()) < 1e-8
    one_a, one_b = clients(k=1)
    assert float(agg.lora_fair(one_a * 3, one_b * 3, WEIGHTS, solver="ridge")[2].delta_b.abs().max()) < 1e-10


def test_bad_weights_are_refused():
    a, b = clients(k=2)
    with pytest.raises(ValueError):
        agg.fedit(a, b, [0, 0])
    with pytest.raises(ValueError):
        agg.fedit(a, b, [1, 2, 3])
