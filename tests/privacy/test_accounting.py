"""RDP accounting with Opacus: ε grows with steps and matches Opacus; the budget check refuses with the numbers."""

from __future__ import annotations

import re

import pytest
import torch
from dp_models import encoded_rows, tiny_lora
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from studio.errors import StudioError
from studio.privacy.accounting import PrivacyBudgetExceeded, PrivacyLedger, check_budget, noise_for_budget
from studio.privacy.dp_sgd import make_dp_trainer
from studio.privacy.per_sample import trainable_parameters


def opacus_epsilon(steps_at: list[tuple[float, float, int]], delta: float) -> float:
    """Opacus' accountant stepped once per step, the way its optimizer hook does."""
    accountant = RDPAccountant()
    for sigma, q, n in steps_at:
        for _ in range(n):
            accountant.step(noise_multiplier=sigma, sample_rate=q)
    return accountant.get_epsilon(delta=delta)


def test_epsilon_grows_with_steps_and_matches_opacus():
    ledger = PrivacyLedger()
    assert ledger.epsilon() == 0.0
    values = []
    for _ in range(4):
        ledger.record(1.1, 0.01, steps=50)
        values.append(ledger.epsilon())
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert ledger.steps == 200 and ledger.history == [(1.1, 0.01, 200)]
    assert values[-1] == pytest.approx(opacus_epsilon([(1.1, 0.01, 200)], 1e-5), rel=1e-9)
    # and from Opacus' RDP analysis directly (orders as its accountant uses)
    orders = RDPAccountant.DEFAULT_ALPHAS
    eps, _ = get_privacy_spent(orders=orders, rdp=compute_rdp(q=0.01, noise_multiplier=1.1, steps=200, orders=orders), delta=1e-5)
    assert values[-1] == pytest.approx(float(eps), rel=1e-9)
    assert 0.1 < values[-1] < 10


def test_mixed_rounds_match_opacus_and_survive_a_round_trip():
    ledger = PrivacyLedger(delta=1e-6)
    plan = [(1.0, 0.02, 30), (0.8, 0.05, 10), (1.0, 0.02, 5)]
    for sigma, q, n in plan:
        ledger.record(sigma, q, n)
    assert ledger.epsilon() == pytest.approx(opacus_epsilon(plan, 1e-6), rel=1e-9)
    again = PrivacyLedger.from_dict(ledger.as_dict())
    assert again.epsilon() == ledger.epsilon() and again.steps == 45


def test_trainer_accounts_the_steps_it_ran():
    model = tiny_lora()
    opt = torch.optim.SGD(trainable_parameters(model).values(), lr=0.05)
    rows = encoded_rows(40)
    trainer = make_dp_trainer(model, opt, rows, pad_id=0, noise_multiplier=1.2, max_grad_norm=1.0, batch_size=2, seed=1)
    eps = []
    for _ in range(3):  # three "rounds" of two steps on one ledger
        trainer.run(2)
        eps.append(trainer.epsilon())
    assert eps[0] < eps[1] < eps[2]
    assert eps[2] == pytest.approx(opacus_epsilon([(1.2, 0.05, 6)], 1e-5), rel=1e-9)


def test_noise_for_budget_reaches_the_target():
    sigma = noise_for_budget(3.0, 1e-5, 0.01, 1000)
    spent = opacus_epsilon([(sigma, 0.01, 1000)], 1e-5)
    assert 3.0 - 0.011 <= spent <= 3.0
    assert noise_for_budget(1.0, 1e-5, 0.01, 1000) > sigma  # a tighter budget needs more noise


def test_check_budget_passes_a_plan_within_budget():
    planned = check_budget(8.0, noise_multiplier=1.0, sample_rate=0.01, steps=500)
    assert planned == pytest.approx(opacus_epsilon([(1.0, 0.01, 500)], 1e-5), rel=1e-9)


def test_check_budget_refuses_with_the_numbers():
    planned = opacus_epsilon([(1.0, 0.02, 1000)], 1e-5)
    with pytest.raises(PrivacyBudgetExceeded) as info:
        check_budget(3.0, noise_multiplier=1.0, sample_rate=0.02, steps=1000)
    message = str(info.value)
    assert isinstance(info.value, StudioError)
    for piece in ("1000 DP-SGD steps", "q = 0.02", "σ = 1 ", f"ε = {planned:.3g}", "budget ε = 3.", "δ = 1e-05"):
        assert piece in message, (piece, message)
    # the suggestions are real: the σ it names fits the budget, and so do the steps it names
    sigma = float(re.search(r"σ ≥ ([0-9.]+)", message).group(1))
    assert sigma > 1.0 and opacus_epsilon([(sigma, 0.02, 1000)], 1e-5) <= 3.0 + 0.02
    fits = int(re.search(r"at most (\d+) steps", message).group(1))
    assert 0 < fits < 1000
    assert opacus_epsilon([(1.0, 0.02, fits)], 1e-5) <= 3.0 < opacus_epsilon([(1.0, 0.02, fits + 1)], 1e-5)


def test_a_plan_with_no_step_in_budget_says_so():
    with pytest.raises(PrivacyBudgetExceeded, match="Even one step at σ = 0.7 would exceed it"):
        check_budget(1.0, noise_multiplier=0.7, sample_rate=0.05, steps=10)


def test_check_budget_counts_earlier_rounds():
    ledger = PrivacyLedger()
    ledger.record(1.0, 0.01, 200)
    alone = check_budget(10.0, noise_multiplier=1.0, sample_rate=0.01, steps=100)
    with_history = check_budget(10.0, noise_multiplier=1.0, sample_rate=0.01, steps=100, ledger=ledger)
    assert with_history > alone
    with pytest.raises(PrivacyBudgetExceeded, match="200 steps already run"):
        check_budget(ledger.epsilon() * 1.01, noise_multiplier=1.0, sample_rate=0.01, steps=100, ledger=ledger)
    with pytest.raises(PrivacyBudgetExceeded, match="already spent"):
        check_budget(ledger.epsilon() * 0.5, noise_multiplier=1.0, sample_rate=0.01, steps=1, ledger=ledger)
    assert ledger.steps == 200  # checking never records


def test_an_over_budget_run_is_refused_before_any_step():
    model = tiny_lora()
    before = {n: p.detach().clone() for n, p in trainable_parameters(model).items()}
    opt = torch.optim.SGD(trainable_parameters(model).values(), lr=0.1)
    trainer = make_dp_trainer(
        model, opt, encoded_rows(40), pad_id=0, noise_multiplier=1.0, max_grad_norm=1.0, batch_size=2,
        target_epsilon=2.0, seed=0,
    )
    with pytest.raises(PrivacyBudgetExceeded, match="500 DP-SGD steps at sampling rate q = 0.05"):
        trainer.run(500)
    assert trainer.ledger.steps == 0
    assert all(torch.equal(p, before[n]) for n, p in trainable_parameters(model).items())
