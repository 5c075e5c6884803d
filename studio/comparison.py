"""Variant comparison at a matched budget: one run per variant, summarised as a table and a convergence overlay.

Shared by ``scripts/compare_variants.py`` (docs/results/variant_comparison.md) and by a sweep in compare
mode (the Sweep tab, ``studio sweep --compare``). A *run* is a plain dict with at least ``variant`` and
``status``; a succeeded run also has ``train_loss`` (the loss at every step, in order), ``eval_curve``
(validation loss by step), ``eval_accuracy_curve`` (classification), ``trainable_params`` and
``seconds_per_step``; :func:`run_metrics` reads them from a finished train job.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

SMOOTH = 5  # trailing window of the training-loss curve: one batch per step is noisy
# Colours of the overlay's lines (Plotly's default sequence), repeated past ten variants.
PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880", "#ff97ff", "#fecb52")


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: — for missing, thousands separators for large floats, ``digits`` significant otherwise."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table, cells through :func:`fmt`."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines)


def trailing_mean(values: list[float], window: int = SMOOTH) -> list[float]:
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    return [
        sum(values[max(0, i + 1 - window) : i + 1]) / len(values[max(0, i + 1 - window) : i + 1])
        for i in range(len(values))
    ]


def steps_to(values: list[float], target: float) -> int | None:
    """First step (1-based, from step SMOOTH on: full windows only) whose trailing mean is at or below ``target``."""
    for i, v in enumerate(trailing_mean(values)):
        if i + 1 >= SMOOTH and v <= target + 1e-12:
            return i + 1
    return None


def eval_steps_to(curve: dict[Any, float], target: float) -> int | None:
    """First validation step whose loss is at or below ``target``."""
    for step, value in sorted((int(k), v) for k, v in curve.items()):
        if value is not None and value <= target + 1e-12:
            return step
    return None


def fmt_curve(curve: dict[int, float]) -> str:
    """``1.748 / 1.722 / 1.713``: a curve's values in step order."""
    return " / ".join(f"{v:.3f}" for _, v in sorted(curve.items())) if curve else "—"


def run_metrics(job: Any, metrics: Iterable[Any]) -> dict[str, Any]:
    """The comparison fields of a finished train job (a registry job row and its metric rows)."""
    metrics = sorted(metrics, key=lambda m: m.step)
    result = job.result or {}
    timings = result.get("timings") or {}
    steps = timings.get("steps") or result.get("steps")
    seconds = timings.get("train_s")
    if seconds is None and job.started_at and job.finished_at:  # no timings kept: the job's wall time
        seconds = (job.finished_at - job.started_at).total_seconds()
    return {
        "train_loss": [m.value for m in metrics if m.name == "loss"],
        "eval_curve": {int(m.step): m.value for m in metrics if m.name == "eval_loss"},
        "eval_accuracy_curve": {int(m.step): m.value for m in metrics if m.name == "eval_accuracy"},
        "trainable_params": result.get("trainable_params"),
        "training_setup": result.get("training_setup"),
        "adapter_id": result.get("adapter_id"),
        "seconds_per_step": seconds / steps if seconds is not None and steps else None,
    }


def _last(curve: dict[Any, float] | None) -> float | None:
    return curve[max(curve, key=int)] if curve else None


def table_rows(runs: list[dict[str, Any]], classification: bool = False) -> tuple[list[str], list[list[Any]]]:
    """Headers and one row per run: trainable parameters, final train loss (trailing mean), final validation
    loss (and accuracy for classification), seconds per step, the validation curve, and the status."""
    headers = ["variant", "trainable", "train loss", "eval loss"]
    headers += ["eval accuracy"] if classification else []
    headers += ["s / step", "eval loss curve", "status"]
    rows = []
    for run in runs:
        ok = run.get("status") == "succeeded"
        train = run.get("train_loss") or []
        eval_curve = run.get("eval_curve") or {}
        row: list[Any] = [
            f"`{run['variant']}`",
            f"{run['trainable_params']:,}" if ok and run.get("trainable_params") is not None else None,
            round(trailing_mean(train)[-1], 4) if ok and train else None,
            round(_last(eval_curve), 4) if ok and eval_curve else None,
        ]
        if classification:
            accuracy = _last(run.get("eval_accuracy_curve"))
            row.append(round(accuracy, 4) if ok and accuracy is not None else None)
        per_step = run.get("seconds_per_step")
        row += [round(per_step, 3) if ok and per_step is not None else None, fmt_curve(eval_curve), run.get("status")]
        rows.append(row)
    return headers, rows


def overlay_series(runs: list[dict[str, Any]], metric: str = "eval_curve") -> dict[str, list[tuple[int, float]]]:
    """``{variant: [(step, value), ...]}`` of every run with a curve, in step order (the overlay's lines)."""
    return {
        run["variant"]: sorted((int(k), float(v)) for k, v in run[metric].items() if v is not None)
        for run in runs
        if run.get(metric)
    }


def overlay_figure(runs: list[dict[str, Any]], metric: str = "eval_curve", title: str = "Validation loss") -> Any:
    """A Plotly figure: the validation loss by step, one line per variant (the convergence overlay)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for i, (variant, points) in enumerate(overlay_series(runs, metric).items()):
        figure.add_trace(
            go.Scatter(
                x=[s for s, _ in points],
                y=[v for _, v in points],
                mode="lines+markers",
                name=variant,
                line={"color": PALETTE[i % len(PALETTE)]},
            )
        )
    figure.update_layout(title=title, xaxis_title="step", yaxis_title=title.lower(), legend_title="variant")
    return figure


def overlay_svg(runs: list[dict[str, Any]], metric: str = "eval_curve", title: str = "Validation loss") -> str:
    """The convergence overlay as a standalone SVG (for Markdown: no JavaScript, no image library)."""
    series = overlay_series(runs, metric)
    width, height, left, right, top, bottom = 640, 360, 60, 130, 30, 40
    points = [p for line in series.values() for p in line]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="13">{html.escape(title)} by step, one line per variant</text>',
    ]
    if points:
        x0, x1 = min(s for s, _ in points), max(s for s, _ in points)
        y0, y1 = min(v for _, v in points), max(v for _, v in points)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-6)
        plot_w, plot_h = width - left - right, height - top - bottom

        def xy(step: float, value: float) -> str:
            return f"{left + (step - x0) / (x1 - x0) * plot_w:.1f},{top + (y1 - value) / (y1 - y0) * plot_h:.1f}"

        parts += [
            f'<polyline points="{xy(x0, y1)} {xy(x0, y0)} {xy(x1, y0)}" fill="none" stroke="#444"/>',
            f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{y1:.3f}</text>',
            f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">{y0:.3f}</text>',
            f'<text x="{left}" y="{top + plot_h + 16}" text-anchor="middle">{x0}</text>',
            f'<text x="{left + plot_w}" y="{top + plot_h + 16}" text-anchor="middle">{x1}</text>',
            f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">step</text>',
        ]
        for i, (variant, line) in enumerate(series.items()):
            colour, name = PALETTE[i % len(PALETTE)], html.escape(variant)
            coords = " ".join(xy(s, v) for s, v in line)
            parts.append(
                f'<polyline class="variant-line" data-variant="{name}" points="{coords}" fill="none" '
                f'stroke="{colour}" stroke-width="2"/>'
            )
            legend_y = top + 14 * i + 6
            parts += [
                f'<line x1="{width - right + 10}" y1="{legend_y}" x2="{width - right + 28}" y2="{legend_y}" '
                f'stroke="{colour}" stroke-width="2"/>',
                f'<text x="{width - right + 32}" y="{legend_y + 4}">{name}</text>',
            ]
    parts.append("</svg>")
    return "\n".join(parts)


def comparison_markdown(
    runs: list[dict[str, Any]], title: str, setup: Sequence[str] = (), classification: bool = False
) -> str:
    """A Markdown report: the set-up lines, the table and the overlay (an inline SVG data URI)."""
    import base64

    headers, rows = table_rows(runs, classification)
    svg = base64.b64encode(overlay_svg(runs).encode("utf-8")).decode("ascii")
    lines = [f"# {title}", ""]
    lines += [f"- {line}" for line in setup]
    lines += [
        "",
        f"Train loss = trailing {SMOOTH}-step mean at the last step; eval loss = the last validation point; "
        "s / step = training seconds over steps (trials that ran side by side share the machine).",
        "",
        markdown_table(headers, rows),
        "",
        "## Convergence overlay (validation loss by step)",
        "",
        f"![validation loss by step, one line per variant](data:image/svg+xml;base64,{svg})",
        "",
    ]
    return "\n".join(lines)
