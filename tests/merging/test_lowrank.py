"""Merged ΔW -> LoRA factors: exact where ΔW is low-rank, best or near-best otherwise, error always true."""

from __future__ import annotations

import pytest
import torch

from studio.merging import lowrank
from studio.merging.lowrank import low_rank_factors


def matrix_with_spectrum(m: int, n: int, values: list[float], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, len(values), generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(values), generator=generator, dtype=torch.float64))
    return (u * torch.tensor(values, dtype=torch.float64)) @ v.T


def true_error(delta: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(delta - b.double() @ a.double()) / torch.linalg.matrix_norm(delta))


def best_error(delta: torch.Tensor, rank: int) -> float:
    s = torch.linalg.svdvals(delta)
    return float((s[rank:].square().sum() / s.square().sum()).sqrt())


def test_a_low_rank_change_is_recovered_exactly_without_a_full_svd(monkeypatch):
    delta = matrix_with_spectrum(300, 200, [5.0, 3.0, 2.0, 1.0, 0.5])

    def full_svd(*args):
        raise AssertionError("a full SVD of ΔW ran")

    monkeypatch.setattr(lowrank, "factorise", full_svd)
    b, a, error, how = low_rank_factors(delta, rank=8)
    assert how == "range" and b.shape == (300, 5) and a.shape == (5, 200)  # the numerical rank, not 8
    assert error < 1e-6 and true_error(delta, b, a) < 1e-6


def test_a_full_rank_change_gets_the_best_truncation_and_its_true_error():
    delta = matrix_with_spectrum(120, 90, [2.0**-i for i in range(90)])
    b, a, error, how = low_rank_factors(delta, rank=6)
    assert how == "svd" and b.shape[1] == 6
    assert error == pytest.approx(best_error(delta, 6), rel=1e-6)
    assert true_error(delta, b, a) == pytest.approx(error, rel=1e-4)


def test_too_large_for_a_full_svd_uses_power_iterations_close_to_the_best(monkeypatch):
    monkeypatch.setattr(lowrank, "FULL_SVD_ELEMENTS", 0)
    delta = matrix_with_spectrum(400, 300, [1.0 / (1 + i) for i in range(300)], seed=3)
    b, a, error, how = low_rank_factors(delta, rank=10)
    assert how == "randomized"
    assert true_error(delta, b, a) == pytest.approx(error, rel=1e-6)  # what is reported is what was written
    best = best_error(delta, 10)
    assert best <= error <= best * 1.02


def test_zero_change_and_determinism():
    b, a, error, _ = low_rank_factors(torch.zeros(50, 40), rank=4)
    assert b.shape == (50, 0) and a.shape == (0, 40) and error == 0.0
    delta = matrix_with_spectrum(200, 100, [1.0, 0.5, 0.25])
    first, again = low_rank_factors(delta, rank=4), low_rank_factors(delta, rank=4)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
