"""Server-side aggregation of client LoRA factors (spec composition.md §3): pure torch, one module at a time.

PEFT shapes: ``A`` is (r, d_in), ``B`` is (d_out, r), ΔW = s·B·A. Every function takes the
clients' factors of ONE module and the clients' weights ``w_k`` (their row counts n_k);
``p_k = w_k / Σ w``. Arithmetic is float64 and results come back in the clients' dtype.

- FedIT: Ā = Σ p_k A_k, B̄ = Σ p_k B_k. Biased: B̄Ā ≠ ΔW* = Σ p_k B_k A_k (:func:`aggregation_bias`).
- FFA-LoRA: A is shared (seeded by the server) and frozen; B̄ = Σ p_k B_k, exact.
- FLoRA: stacking A_s = [p_1 A_1; …; p_K A_K], B_s = [B_1 … B_K]; exact, ranks may differ.
- LoRA-FAIR: a server correction ΔB with (B̄ + ΔB) Ā close to ΔW* — iterative (cosine + λ‖ΔB‖², SGD,
  the spec's schedule) or closed-form ridge (Frobenius + λ‖ΔB‖²).

Scales: FedIT/FFA/LoRA-FAIR clients share one rank and lora_alpha, so the common scale s factors
out of every formula and the functions work on the raw PEFT tensors. FLoRA's clients may differ
in rank and alpha: pass each client's scale (``scales``) and it is folded into B (B ← s_k B_k), so
the stacked LoRA has scale 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# LoRA-FAIR's iterative solver (spec §3): SGD lr 0.01, ≤1000 iterations, stop when the loss
# changes by less than 1e-6 for 5 iterations in a row, keep the best iterate, λ = 0.01.
FAIR_LR = 0.01
FAIR_MAX_ITERS = 1000
FAIR_TOLERANCE = 1e-6
FAIR_PATIENCE = 5
FAIR_LAMBDA = 0.01


def client_weights(weights: Sequence[float]) -> torch.Tensor:
    """p_k = w_k / Σ w (float64); refuses negative weights or an all-zero sum."""
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    if w.numel() == 0:
        raise ValueError("no clients to aggregate")
    if bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError("client weights must be non-negative and not all zero")
    return w / w.sum()


def weighted_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ p_k T_k in float64, returned in the first tensor's dtype."""
    p = client_weights(weights)
    if len(tensors) != len(p):
        raise ValueError(f"{len(tensors)} tensors but {len(p)} weights")
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"clients sent different shapes {sorted(shapes)}: average needs one rank")
    out = sum(float(pk) * t.double() for pk, t in zip(p, tensors, strict=True))
    return out.to(tensors[0].dtype)


def fedit(a_list: Sequence[torch.Tensor], b_list: Sequence[torch.Tensor], weights: Sequence[float]):
    """FedIT: (Ā, B̄) averaged separately."""
    return weighted_mean(a_list, weights), weighted_mean(b_list, weights)


def ffa(b_list: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """FFA-LoRA: B̄ = Σ p_k B_k (A is the server's seeded, frozen one, never sent)."""
    return weighted_mean(b_list, weights)


def ideal_delta(a_list, b_list, weights) -> torch.Tensor:
    """ΔW* = Σ p_k B_k A_k (float64): what the clients' updates average to (unscaled)."""
    p = client_weights(weights)
    return sum(float(pk) * (b.double() @ a.double()) for pk, a, b in zip(p, a_list, b_list, strict=True))


def aggregation_bias(a_list, b_list, weights) -> float:
    """‖B̄Ā − ΔW*‖_F of FedIT: zero for identical clients or a shared A, positive otherwise."""
    a_bar, b_bar = fedit([a.double() for a in a_list], [b.double() for b in b_list], weights)
    return float((b_bar @ a_bar - ideal_delta(a_list, b_list, weights)).norm())


def flora_stack(a_list, b_list, weights, scales: Sequence[float] | None = None):
    """FLoRA: (A_s, B_s) = ([p_k A_k] stacked by rows, [s_k B_k] side by side); B_s A_s = Σ p_k s_k B_k A_k.

    Rank of the result = Σ r_k (clients may differ in rank). Scale of the result is 1.
    """
    p = client_weights(weights)
    scales = [1.0] * len(p) if scales is None else list(scales)
    if not (len(a_list) == len(b_list) == len(p) == len(scales)):
        raise ValueError("one A, one B, one weight and one scale per client")
    a_s = torch.cat([float(pk) * a.double() for pk, a in zip(p, a_list, strict=True)], dim=0)
    b_s = torch.cat([float(s) * b.double() for s, b in zip(scales, b_list, strict=True)], dim=1)
    return a_s.to(a_list[0].dtype), b_s.to(b_list[0].dtype)


def cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """cos(vec x, vec y); 1 when both are zero (nothing to correct), 0 when only one is."""
    nx, ny = x.norm(), y.norm()
    zero_x, zero_y = float(nx.detach()) == 0.0, float(ny.detach()) == 0.0
    if zero_x or zero_y:
        return x.new_tensor(1.0 if zero_x and zero_y else 0.0)
    return (x * y).sum() / (nx * ny)


@dataclass
class FairCorrection:
    """LoRA-FAIR's ΔB for one module and how well it did."""

    delta_b: torch.Tensor
    cosine_before: float  # cos(ΔW*, B̄Ā)
    cosine_after: float  # cos(ΔW*, (B̄+ΔB)Ā)
    iterations: int
    loss: float


def lora_fair_correction(
    a_bar: torch.Tensor,
    b_bar: torch.Tensor,
    target: torch.Tensor,
    *,
    lam: float = FAIR_LAMBDA,
    lr: float = FAIR_LR,
    max_iters: int = FAIR_MAX_ITERS,
    tolerance: float = FAIR_TOLERANCE,
    patience: int = FAIR_PATIENCE,
) -> FairCorrection:
    """ΔB = argmin 1 − cos(vec ΔW*, vec((B̄+ΔB)Ā)) + λ‖ΔB‖_F² by SGD from ΔB = 0 (spec §3).

    The best iterate is kept; since ΔB = 0 is the first one, the result's loss is never above
    1 − cos_before, hence cos_after ≥ cos_before + λ‖ΔB‖² ≥ cos_before.
    """
    a = a_bar.detach().double()
    b = b_bar.detach().double()
    t = target.detach().double()
    delta = torch.zeros_like(b, requires_grad=True)
    optimizer = torch.optim.SGD([delta], lr=lr)

    def objective() -> torch.Tensor:
        return 1.0 - cosine(t, (b + delta) @ a) + lam * delta.square().sum()

    before = float(cosine(t, b @ a))
    best_loss, best = float("inf"), torch.zeros_like(b)
    previous, flat, iterations = None, 0, 0
    for iterations in range(1, max_iters + 1):  # noqa: B007  (the count is reported)
        optimizer.zero_grad()
        loss = objective()
        value = float(loss.detach())
        if value < best_loss:
            best_loss, best = value, delta.detach().clone()
        if previous is not None and abs(previous - value) < tolerance:
            flat += 1
            if flat >= patience:
                break
        else:
            flat = 0
        previous = value
        loss.backward()
        optimizer.step()
    after = float(cosine(t, (b + best) @ a))
    return FairCorrection(best.to(b_bar.dtype), before, after, iterations, best_loss)


def lora_fair_ridge(a_bar: torch.Tensor, b_bar: torch.Tensor, target: torch.Tensor, lam: float = FAIR_LAMBDA):
    """Closed-form ridge ΔB = (ΔW* − B̄Ā) Āᵀ (ĀĀᵀ + λI)⁻¹ (minimises the Frobenius error + λ‖ΔB‖²)."""
    a = a_bar.double()
    residual = target.double() - b_bar.double() @ a
    gram = a @ a.T + lam * torch.eye(a.shape[0], dtype=torch.float64)
    # solve (ĀĀᵀ + λI) X = Ā Rᵀ, then ΔB = Xᵀ (the Gram matrix is symmetric)
    delta = torch.linalg.solve(gram, a @ residual.T).T
    return delta.to(b_bar.dtype)


def lora_fair(a_list, b_list, weights, *, solver: str = "iterative", lam: float = FAIR_LAMBDA, **options):
    """LoRA-FAIR for one module: (Ā, B̄ + ΔB, FairCorrection). ``solver`` is "iterative" or "ridge"."""
    a_bar, b_bar = fedit(a_list, b_list, weights)
    target = ideal_delta(a_list, b_list, weights)
    if solver == "ridge":
        delta = lora_fair_ridge(a_bar, b_bar, target, lam)
        before = float(cosine(target, b_bar.double() @ a_bar.double()))
        after = float(cosine(target, (b_bar.double() + delta.double()) @ a_bar.double()))
        report = FairCorrection(delta, before, after, 0, float("nan"))
    elif solver == "iterative":
        report = lora_fair_correction(a_bar, b_bar, target, lam=lam, **options)
    else:
        raise ValueError(f"unknown LoRA-FAIR solver {solver!r}: use 'iterative' or 'ridge'")
    return a_bar, (b_bar.double() + report.delta_b.double()).to(b_bar.dtype), report


# -- a whole adapter: {module: (A, B)} per client ---------------------------------------------------------

METHODS = ("fedit", "ffa", "flora", "lora_fair")


def aggregate_modules(
    method: str,
    updates: Sequence[dict[str, tuple[torch.Tensor | None, torch.Tensor]]],
    weights: Sequence[float],
    *,
    previous: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    scale: float = 1.0,
    fair_solver: str = "iterative",
    fair_lambda: float = FAIR_LAMBDA,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, FairCorrection]]:
    """The next global state of every module from the clients' ``(A_k, B_k)`` (A is None for FFA).

    - fedit / lora_fair: the global adapter (Ā, B̄) or (Ā, B̄ + ΔB), in the clients' parameterisation;
    - ffa: (A of ``previous``, B̄) — the server's seeded A never travels;
    - flora: ``previous`` (the stack merged so far, scale 1) with this round's stack appended;
      ``scale`` (alpha / r of the clients' LoRA) is folded into the new B blocks.

    Returns (state, {module: LoRA-FAIR report}) — the reports are empty for other methods.
    """
    if method not in METHODS:
        raise ValueError(f"unknown federated method {method!r}: one of {', '.join(METHODS)}")
    modules = set(updates[0]) if updates else set()
    if not updates or any(set(u) != modules for u in updates):
        raise ValueError("clients must send the same, non-empty set of modules")
    state, reports = {}, {}
    for name in sorted(modules):
        a_list = [u[name][0] for u in updates]
        b_list = [u[name][1] for u in updates]
        if method == "fedit":
            state[name] = fedit(a_list, b_list, weights)
        elif method == "lora_fair":
            a_bar, b_new, reports[name] = lora_fair(a_list, b_list, weights, solver=fair_solver, lam=fair_lambda)
            state[name] = (a_bar, b_new)
        elif method == "ffa":
            if previous is None or name not in previous:
                raise ValueError(f"FFA-LoRA needs the server's frozen A of {name}")
            state[name] = (previous[name][0], ffa(b_list, weights))
        else:
            a_s, b_s = flora_stack(a_list, b_list, weights, [scale] * len(updates))
            if previous is not None and name in previous and previous[name][0].shape[0] > 0:
                a_s = torch.cat([previous[name][0], a_s], dim=0)
                b_s = torch.cat([previous[name][1], b_s], dim=1)
            state[name] = (a_s, b_s)
    return state, reports
