"""Variant diagnostics charts: per-module scalars over training, and SoRA's stage trade-off.

Pure functions like :mod:`studio.charts`: rank-snapshot rows (``step``, ``module``,
``extra``) or metric rows (``step``, ``name``, ``value``) in, plotly Figure out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from studio.charts import PALETTE, _base_layout, _get, empty_figure, split_module

# Bookkeeping keys of the snapshots' extras that are not worth a panel of their own.
HIDDEN_EXTRAS = frozenset({"stage", "xi"})
MAX_PANELS = 4
# Panel titles for the scalars variants record (others: the key with spaces).
LABELS = {
    "b_norm": "‖B‖ (Frobenius)",
    "core_drift": "‖core − core at init‖",
    "core_sv0": "largest singular value of the core",
    "nnz": "active rank components",
    "sparsity": "share of components switched off",
    "retained_params": "parameters kept",
}
STAGE_PREFIX = "stage_"


def diagnostic_series(snapshots: Iterable[Any]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{scalar: {module type: [(step, mean over the layers)]}} from the snapshots' ``extra`` values."""
    sums: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for row in snapshots:
        extra = _get(row, "extra") or {}
        module_type = split_module(str(_get(row, "module")))[1]
        for key, value in extra.items():
            if key not in HIDDEN_EXTRAS and isinstance(value, int | float):
                sums[(key, module_type, int(_get(row, "step")))].append(float(value))
    out: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for (key, module_type, step), values in sorted(sums.items()):
        out[key][module_type].append((step, sum(values) / len(values)))
    return {k: dict(v) for k, v in out.items()}


def _panel_keys(series: dict[str, Any]) -> list[str]:
    # Singular values come numbered (core_sv0, core_sv1, ...): the first one stands for the family.
    keys = [k for k in series if not (k.startswith("core_sv") and k != "core_sv0")]
    return keys[:MAX_PANELS]


def diagnostics_figure(snapshots: Iterable[Any], title: str = "Variant diagnostics") -> go.Figure:
    """One panel per recorded scalar (‖B‖, core drift, gate count...), a line per module type.

    Each line is the mean over layers of that module type at each logged step; the
    per-module values stay in the registry's rank snapshots.
    """
    series = diagnostic_series(snapshots)
    if not series:
        return empty_figure("This variant records no per-module diagnostics.", title)
    keys = _panel_keys(series)
    fig = make_subplots(
        rows=len(keys), cols=1, shared_xaxes=True, subplot_titles=[LABELS.get(k, k.replace("_", " ")) for k in keys]
    )
    types = sorted({t for per_type in series.values() for t in per_type})
    for row, key in enumerate(keys, start=1):
        for i, module_type in enumerate(types):
            points = series[key].get(module_type)
            if not points:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in points],
                    y=[p[1] for p in points],
                    mode="lines",
                    name=module_type,
                    legendgroup=module_type,
                    showlegend=row == 1,
                    line={"color": PALETTE[i % len(PALETTE)]},
                ),
                row=row,
                col=1,
            )
    _base_layout(fig, title, "", "")
    fig.update_xaxes(title_text="step", row=len(keys), col=1)
    fig.update_layout(height=120 + 200 * len(keys), legend={"orientation": "h", "y": -0.08})
    return fig


def stage_rows(metric_rows: Iterable[Any]) -> list[dict[str, float]]:
    """The stage-end evaluations among a job's metrics, one dict per stage (keys without ``stage_``)."""
    by_step: dict[int, dict[str, float]] = defaultdict(dict)
    for row in metric_rows:
        name = str(_get(row, "name"))
        if name.startswith(STAGE_PREFIX):
            by_step[int(_get(row, "step"))][name.removeprefix(STAGE_PREFIX)] = float(_get(row, "value"))
    return [{"step": float(step), **values} for step, values in sorted(by_step.items())]


def stage_figure(
    metric_rows: Iterable[Any], title: str = "Stages: quality against active rank components"
) -> go.Figure:
    """SoRA's sparsifying scheduler: memorisation (training subset) and generalisation (validation)
    at the end of each stage, against the number of rank components still switched on.

    Accuracy where the task has one (classification), else loss.
    """
    stages = stage_rows(metric_rows)
    if not stages:
        return empty_figure("No stage evaluations (SoRA's scheduler only).", title)
    measure = "accuracy" if any("val_accuracy" in s or "train_accuracy" in s for s in stages) else "loss"
    fig = go.Figure()
    for i, (prefix, label) in enumerate((("train", "memorisation (training subset)"), ("val", "generalisation"))):
        points = [s for s in stages if f"{prefix}_{measure}" in s]
        if not points:
            continue
        fig.add_trace(
            go.Scatter(
                x=[s["active_components"] for s in points],
                y=[s[f"{prefix}_{measure}"] for s in points],
                mode="lines+markers+text",
                text=[f"stage {int(s['stage'])}" for s in points],
                textposition="top center",
                name=label,
                line={"color": PALETTE[i]},
                hovertemplate="%{text}<br>%{x} components<br>" + measure + " %{y:.4g}<extra></extra>",
            )
        )
    _base_layout(fig, title, "active rank components (all modules)", measure)
    fig.update_xaxes(autorange="reversed")  # stages remove components: read left to right
    return fig
