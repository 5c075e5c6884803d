"""(ε, δ) accounting of DP-SGD with Opacus' RDP accountant, and refusing over-budget plans.

The ledger records the (σ, q) of every step actually run (all rounds of a federated client) and
asks Opacus' ``RDPAccountant`` for ε at δ. :func:`check_budget` runs the same accountant on the
planned steps before anything trains and refuses a plan whose ε would exceed the budget.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from studio.errors import StudioError

DEFAULT_DELTA = 1e-5
# Bisection on σ for the refusal message stops at this relative width (the message prints 3 digits).
_SIGMA_TOLERANCE = 1e-3


class PrivacyBudgetExceeded(StudioError):
    """A planned DP run would spend more ε than its budget; refused before it starts."""


def _accountant(history: list[tuple[float, float, int]]) -> Any:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = list(history)
    return accountant


def epsilon_for(history: list[tuple[float, float, int]], delta: float = DEFAULT_DELTA) -> float:
    """ε at ``delta`` after the steps in ``history`` ([(σ, q, steps), ...]); 0 before any step, inf at σ = 0."""
    kept = tuple((float(s), float(q), int(n)) for s, q, n in history if n > 0)
    if not kept:
        return 0.0
    if any(s <= 0 for s, _, _ in kept):
        return float("inf")
    return _cached_epsilon(kept, float(delta))


@functools.lru_cache(maxsize=512)
def _cached_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    # Opacus' RDP sum over ~150 orders takes ~1 s at larger q; rounds and bisections ask the same history again.
    return float(_accountant(list(history)).get_epsilon(delta=delta))


@dataclass
class PrivacyLedger:
    """The DP steps actually run by one data holder, as Opacus' history: [(σ, q, steps), ...]."""

    delta: float = DEFAULT_DELTA
    history: list[tuple[float, float, int]] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.history)

    def record(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Add ``steps`` steps at (σ, q), merged into the last entry when it has the same (σ, q) as Opacus does."""
        if steps <= 0:
            return
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            s, q, n = self.history[-1]
            self.history[-1] = (s, q, n + steps)
        else:
            self.history.append((float(noise_multiplier), float(sample_rate), int(steps)))

    def epsilon(self, delta: float | None = None) -> float:
        """ε spent so far at ``delta`` (the ledger's δ by default)."""
        return epsilon_for(self.history, self.delta if delta is None else delta)

    def planned_epsilon(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """ε after the steps already run plus ``steps`` more at (σ, q); the ledger is not changed."""
        return epsilon_for([*self.history, (noise_multiplier, sample_rate, steps)], self.delta)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the registry or a federated round's metrics)."""
        return {"delta": self.delta, "history": [list(h) for h in self.history], "steps": self.steps}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyLedger:
        return cls(delta=float(data.get("delta", DEFAULT_DELTA)), history=[tuple(h) for h in data.get("history", [])])


def noise_for_budget(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest σ (to Opacus' tolerance 0.01 in ε) whose ``steps`` steps at rate q stay within ε, via Opacus."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant="rdp"
        )
    )


def _max_steps(ledger: PrivacyLedger, budget: float, sigma: float, q: float, upper: int) -> int:
    """Most extra steps at (σ, q) that keep ε ≤ budget (0 when even one step would not)."""
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ledger.planned_epsilon(sigma, q, mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _min_sigma(ledger: PrivacyLedger, budget: float, q: float, steps: int) -> float | None:
    """Smallest σ keeping the ledger plus ``steps`` steps at q within budget (None when no σ ≤ 1e6 does)."""
    if not ledger.history:
        try:
            return noise_for_budget(budget, ledger.delta, q, steps)
        except ValueError:
            return None
    lo, hi = 0.0, 1.0
    while ledger.planned_epsilon(hi, q, steps) > budget:
        hi *= 2
        if hi > 1e6:
            return None
    while hi - lo > _SIGMA_TOLERANCE * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ledger.planned_epsilon(mid, q, steps) <= budget else (mid, hi)
    return hi


def check_budget(
    target_epsilon: float,
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float = DEFAULT_DELTA,
    ledger: PrivacyLedger | None = None,
) -> float:
    """The ε a planned run would reach (after ``ledger``'s steps, if any); raises PrivacyBudgetExceeded above budget.

    The message carries the planned ε, the budget, steps, q and σ, and what would fit: the σ that
    keeps the same steps within budget, or the number of steps the given σ allows.
    """
    ledger = ledger if ledger is not None else PrivacyLedger(delta=delta)
    ledger = PrivacyLedger(delta=delta, history=list(ledger.history))
    planned = ledger.planned_epsilon(noise_multiplier, sample_rate, steps)
    if planned <= target_epsilon:
        return planned
    spent = ledger.epsilon()
    already = f" after {ledger.steps} steps already run (ε = {spent:.3g})" if ledger.steps else ""
    head = (
        f"Privacy budget exceeded: {steps} DP-SGD steps at sampling rate q = {sample_rate:.4g} with noise "
        f"σ = {noise_multiplier:.4g}{already} would spend ε = {planned:.3g} at δ = {delta:g}, over the budget "
        f"ε = {target_epsilon:g}."
    )
    if spent >= target_epsilon:
        raise PrivacyBudgetExceeded(f"{head} The budget is already spent: no further steps can run.")
    fixes = []
    sigma = _min_sigma(ledger, target_epsilon, sample_rate, steps)
    if sigma is not None:
        fixes.append(f"raise the noise to σ ≥ {sigma:.3g}")
    fits = _max_steps(ledger, target_epsilon, noise_multiplier, sample_rate, steps)
    if fits:
        fixes.append(f"run at most {fits} steps at σ = {noise_multiplier:.4g}")
    fixes.append("lower q (fewer rows per step) or raise the budget")
    tail = "" if fits else f" Even one step at σ = {noise_multiplier:.4g} would exceed it."
    raise PrivacyBudgetExceeded(f"{head} To fit: {'; or '.join(fixes)}.{tail}")
