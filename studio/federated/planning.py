"""What a federated job does before any training: read the rows, split them, plan the privacy budget.

Shared by the job handler, the job service's submit check, the CLI's ``split-preview`` and the UI's
"Preview split" button, so all of them show the same split and refuse the same plans. Needs no
Flower: previewing a split works where the ``federated`` extra is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import ValidationFailed
from studio.schema import FederatedPrivacy, FederatedRequest


def client_sample_rate(privacy: Any, batch_size: int, rows: int) -> float:
    """q of one client's DP steps: the privacy block's rate, else batch size / rows (at most 1)."""
    if privacy.sample_rate is not None:
        return float(privacy.sample_rate)
    return min(1.0, batch_size / max(1, rows))


def split_column(request: FederatedRequest) -> str | None:
    """The column the split needs from the original file (None for an IID split)."""
    return {
        "dirichlet": request.label_column,
        "label_shares": request.label_column,
        "column": request.client_column,
    }.get(request.split)


def load_rows(dataset_row: Any, request: FederatedRequest) -> list[dict[str, Any]]:
    """The dataset's canonical rows, with the split's column read back from the uploaded file.

    The studio stores rows as ``messages``/``text`` only; a label or client column is recovered
    the way RecLoRA recovers its user column (ValidationFailed listing the columns when absent).
    The label column is recovered too when the file has one (the client-mix chart shows it).
    """
    from studio.composition.reclora_data import dataset_columns, rows_with_users
    from studio.datasets.normalise import read_jsonl

    # the split's column must exist (refused with the list of columns); the label is optional (chart only)
    needed = split_column(request)
    wanted = [needed] if needed else []
    if request.label_column not in wanted and request.label_column in dataset_columns(dataset_row):
        wanted.append(request.label_column)
    rows = read_jsonl(Path(dataset_row.stored_path))
    for column in wanted:
        values = rows_with_users(dataset_row, column)
        rows = [dict(row, **{column: v[column]}) for row, v in zip(rows, values, strict=True)]
    return rows


@dataclass
class SplitPreview:
    """The held-out rows, each client's rows and its label mix ({"client 1": {label: rows}})."""

    validation: list[int]
    parts: list[list[int]]
    mix: dict[str, dict[str, int]]

    def lines(self) -> list[str]:
        """One line per client: 'client 1: 12 rows (neg 3, pos 9)'."""
        out = []
        for (name, counts), part in zip(self.mix.items(), self.parts, strict=True):
            labels = ", ".join(f"{label} {n}" for label, n in counts.items() if n)
            out.append(f"{name}: {len(part)} rows ({labels})")
        return out


def preview_split(rows: list[dict[str, Any]], request: FederatedRequest) -> SplitPreview:
    """The split the job will use (the same seeded functions), refused in plain words when impossible."""
    from studio.federated.partition import label_mix, split_rows

    try:
        validation, parts = split_rows(rows, request)
    except ValueError as exc:
        raise ValidationFailed(f"Split: {exc}") from None
    labels = [row.get(request.label_column, "(none)") for row in rows]
    return SplitPreview(validation, parts, label_mix(labels, parts))


@dataclass
class PrivacyPlan:
    """The DP-SGD settings every client runs with and the ε the worst-placed client would reach."""

    privacy: FederatedPrivacy  # noise_multiplier resolved
    steps: int  # DP steps per client if sampled every round
    sample_rate: float  # the largest q over the clients (the smallest client's)
    epsilon: float  # planned ε of that client at δ

    def describe(self) -> str:
        p = self.privacy
        budget = f", budget ε = {p.target_epsilon:g}" if p.target_epsilon is not None else ""
        return (
            f"DP-SGD: σ = {p.noise_multiplier:.4g}, clip C = {p.max_grad_norm:g}, q ≤ {self.sample_rate:.4g}, "
            f"{self.steps} steps per client → ε ≤ {self.epsilon:.3g} at δ = {p.delta:g}{budget}"
        )


def plan_privacy(request: FederatedRequest, client_rows: list[int]) -> PrivacyPlan | None:
    """Resolve σ (from the target ε when only ε is given) and refuse a plan over budget, BEFORE any training.

    Every client is planned as if sampled in all ``rounds`` rounds (``rounds × local_steps`` steps),
    at the largest sampling rate q over the clients, so the bound holds for each of them. Raises
    :class:`~studio.privacy.accounting.PrivacyBudgetExceeded` with the numbers and what would fit.
    """
    privacy = request.privacy
    if privacy is None:
        return None
    from studio.privacy.accounting import PrivacyLedger, check_budget, noise_for_budget

    steps = request.rounds * request.local_steps
    q = max(client_sample_rate(privacy, request.batch_size, n) for n in client_rows)
    sigma = privacy.noise_multiplier
    if sigma is None:
        try:
            sigma = noise_for_budget(privacy.target_epsilon, privacy.delta, q, steps)
        except ValueError as exc:
            raise ValidationFailed(
                f"Privacy: no noise σ keeps {steps} steps at q = {q:.4g} within ε = {privacy.target_epsilon:g} "
                f"({exc}); use fewer rounds or local steps, or a smaller sample rate"
            ) from None
    if privacy.target_epsilon is not None:
        planned = check_budget(
            privacy.target_epsilon, noise_multiplier=sigma, sample_rate=q, steps=steps, delta=privacy.delta
        )
    else:
        planned = PrivacyLedger(delta=privacy.delta).planned_epsilon(sigma, q, steps)
    resolved = privacy.model_copy(update={"noise_multiplier": float(sigma)})
    return PrivacyPlan(resolved, steps, q, planned)
