"""Pure chart functions: registry rows in, plotly Figure out (no I/O, no Gradio).

Rows may be ORM rows or plain dicts with the same keys (``step``, ``name``,
``value``, ``elapsed_seconds`` for metrics; ``step``, ``module``, ``rank`` for
rank snapshots), so tests and scripts build them by hand.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any

import plotly.graph_objects as go

TRAIN_LOSS_NAMES = ("loss", "train_loss")
VALIDATION_LOSS_NAMES = ("eval_loss", "val_loss", "validation_loss")
PALETTE = ["#4f46e5", "#e11d48", "#059669", "#d97706", "#0891b2", "#7c3aed", "#db2777", "#65a30d"]
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def _get(row: Any, key: str, default: Any = None) -> Any:
    if isinstance(row, Mapping):
        return row.get(key, default)
    return getattr(row, key, default)


def _base_layout(fig: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.01},
        xaxis_title=x_title,
        yaxis_title=y_title,
        template="plotly_white",
        margin={"l": 50, "r": 20, "t": 50, "b": 45},
        legend={"orientation": "h", "y": -0.2},
        height=360,
    )
    return fig


def empty_figure(message: str, title: str = "") -> go.Figure:
    """A blank chart that says why it is blank (no data yet, nothing selected)."""
    fig = go.Figure()
    # In paper coordinates: the axes of an empty figure span -1..6, so a data x of 0.5 sat a fifth of the way
    # across and a long message ran off the chart's left edge.
    fig.add_annotation(
        text=message,
        showarrow=False,
        font={"size": 14, "color": "#6b7280"},
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
        xanchor="center",
        yanchor="middle",
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title={"text": title, "x": 0.01}, template="plotly_white", height=300)
    return fig


def metric_series(rows: Iterable[Any], names: Sequence[str], x: str = "step") -> tuple[list[float], list[float]]:
    """(x values, y values) of the first metric in ``names`` that has rows; x is ``step`` or ``elapsed_seconds``."""
    rows = list(rows)
    for name in names:
        points = [
            (_get(r, x), float(_get(r, "value"))) for r in rows if _get(r, "name") == name and _get(r, x) is not None
        ]
        if points:
            points.sort(key=lambda p: p[0])
            return [p[0] for p in points], [p[1] for p in points]
    return [], []


def loss_figure(rows: Iterable[Any], title: str = "Loss") -> go.Figure:
    """Training loss and validation loss against optimizer step."""
    rows = list(rows)
    train_x, train_y = metric_series(rows, TRAIN_LOSS_NAMES)
    val_x, val_y = metric_series(rows, VALIDATION_LOSS_NAMES)
    if not train_x and not val_x:
        return empty_figure("No loss reported yet: the curve appears after the first logged steps.", title)
    fig = go.Figure()
    if train_x:
        fig.add_trace(go.Scatter(x=train_x, y=train_y, mode="lines", name="training loss", line={"color": PALETTE[0]}))
    if val_x:
        fig.add_trace(
            go.Scatter(
                x=val_x,
                y=val_y,
                mode="lines+markers",
                name="validation loss",
                line={"color": PALETTE[1], "dash": "dot"},
            )
        )
    return _base_layout(fig, title, "step", "loss")


def convergence_figure(
    series: Mapping[str, Iterable[Any]], x_axis: str = "step", metric: str = "loss", title: str | None = None
) -> go.Figure:
    """Several runs' ``metric`` overlaid, against ``step`` or wall time (``time``, in minutes).

    ``series`` maps a legend label (adapter or job name) to that run's metric rows.
    ``metric`` "loss" means the training loss; "eval_loss" the validation loss.
    """
    names = TRAIN_LOSS_NAMES if metric == "loss" else VALIDATION_LOSS_NAMES if metric == "eval_loss" else (metric,)
    key = "elapsed_seconds" if x_axis == "time" else "step"
    x_title = "wall time (min)" if x_axis == "time" else "step"
    title = (
        title
        or f"{'Training' if metric == 'loss' else 'Validation' if metric == 'eval_loss' else metric} loss vs {x_title}"
    )
    fig = go.Figure()
    for i, (label, rows) in enumerate(series.items()):
        xs, ys = metric_series(rows, names, key)
        if not xs:
            continue
        if x_axis == "time":
            xs = [v / 60.0 for v in xs]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=label, line={"color": PALETTE[i % len(PALETTE)]}))
    if not fig.data:
        return empty_figure("Pick one or more adapters (or jobs) with logged metrics to compare them.", title)
    return _base_layout(fig, title, x_title, metric.replace("_", " "))


def split_module(name: str) -> tuple[int, str]:
    """``model.layers.3.self_attn.q_proj`` -> (3, "q_proj"); modules outside numbered layers get -1."""
    match = _LAYER.search(name)
    return (int(match.group(1)) if match else -1), name.rsplit(".", 1)[-1]


def _rank_grid(ranks: Mapping[str, int], layers: list[int], types: list[str]) -> list[list[float | None]]:
    grid: dict[tuple[int, str], float] = defaultdict(float)
    seen: set[tuple[int, str]] = set()
    for module, rank in ranks.items():
        cell = split_module(module)
        grid[cell] += float(rank)  # several modules of one type in a layer (rare) add up
        seen.add(cell)
    return [[grid[(layer, t)] if (layer, t) in seen else None for layer in layers] for t in types]


def rank_heatmap(snapshots: Iterable[Any], title: str = "Rank allocation") -> go.Figure:
    """Rank per (module type × layer) with a step slider; colour = rank. Starts at the last step."""
    by_step: dict[int, dict[str, int]] = defaultdict(dict)
    for row in snapshots:
        by_step[int(_get(row, "step"))][str(_get(row, "module"))] = int(_get(row, "rank"))
    if not by_step:
        return empty_figure("This adapter's ranks did not change during training (fixed-rank variant).", title)
    steps = sorted(by_step)
    cells = {split_module(m) for ranks in by_step.values() for m in ranks}
    layers = sorted({c[0] for c in cells})
    types = sorted({c[1] for c in cells})
    zmax = max(max(r.values(), default=0) for r in by_step.values()) or 1
    x_labels = [str(layer) if layer >= 0 else "other" for layer in layers]

    def heat(step: int) -> go.Heatmap:
        return go.Heatmap(
            z=_rank_grid(by_step[step], layers, types),
            x=x_labels,
            y=types,
            zmin=0,
            zmax=zmax,
            colorscale="Viridis",
            colorbar={"title": "rank"},
            hovertemplate="layer %{x}<br>%{y}<br>rank %{z}<extra></extra>",
        )

    fig = go.Figure(data=[heat(steps[-1])], frames=[go.Frame(data=[heat(s)], name=str(s)) for s in steps])
    _base_layout(fig, title, "layer", "module type")
    fig.update_layout(
        height=max(320, 60 + 40 * len(types)),
        sliders=[
            {
                "active": len(steps) - 1,
                "currentvalue": {"prefix": "step "},
                "pad": {"t": 40},
                "steps": [
                    {
                        "label": str(s),
                        "method": "animate",
                        "args": [
                            [str(s)],
                            {"mode": "immediate", "frame": {"duration": 0}, "transition": {"duration": 0}},
                        ],
                    }
                    for s in steps
                ],
            }
        ],
        updatemenus=[
            {
                "type": "buttons",
                "showactive": False,
                "x": 0,
                "y": -0.25,
                "xanchor": "left",
                "buttons": [
                    {
                        "label": "▶ play",
                        "method": "animate",
                        "args": [
                            None,
                            {"frame": {"duration": 300}, "fromcurrent": False, "transition": {"duration": 0}},
                        ],
                    }
                ],
            }
        ],
    )
    return fig


def final_rank_bars(ranks: Mapping[str, int], title: str = "Final rank per module") -> go.Figure:
    """One bar per adapted module (ordered by layer), coloured by module type."""
    if not ranks:
        return empty_figure("No per-module ranks were recorded for this adapter.", title)
    items = sorted(ranks.items(), key=lambda kv: (split_module(kv[0]), kv[0]))
    types = sorted({split_module(m)[1] for m in ranks})
    fig = go.Figure()
    for i, module_type in enumerate(types):
        chosen = [(m, r) for m, r in items if split_module(m)[1] == module_type]
        labels = [f"L{split_module(m)[0]}.{module_type}" if split_module(m)[0] >= 0 else m for m, _ in chosen]
        fig.add_trace(
            go.Bar(
                x=labels,
                y=[r for _, r in chosen],
                name=module_type,
                marker_color=PALETTE[i % len(PALETTE)],
                hovertext=[m for m, _ in chosen],
            )
        )
    ordered = [f"L{split_module(m)[0]}.{split_module(m)[1]}" if split_module(m)[0] >= 0 else m for m, _ in items]
    fig.update_xaxes(categoryorder="array", categoryarray=ordered, tickangle=-45)
    _base_layout(fig, title, "module", "rank")
    # Slanted module names need room below; the legend goes on top instead.
    fig.update_layout(margin={"b": 100, "t": 80}, legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0})
    return fig


# What the Adapters tab calls each task. A classifier's loss (cross-entropy over its labels) and a
# text generator's (per-token language-model loss) measure different things, so they never share an axis.
TASK_NAMES = {"causal-lm": "Text generation", "classification": "Classification", None: "Task unknown"}
_TASK_ORDER = list(TASK_NAMES)
# Beyond this ratio of the largest to the smallest parameter count a log axis reads better than a linear one.
_LOG_AXIS_SPAN = 10


def params_metric_scatter(points: Iterable[Mapping[str, Any]], metric: str, title: str | None = None) -> go.Figure:
    """Trainable parameters against ``metric``: one panel per task, one colour per variant.

    Each point is ``{"label", "variant", "params", "value"}`` with an optional ``"task"``
    (``"causal-lm"``, ``"classification"``; missing or None: unknown); points without a value
    are skipped. Adapters of different tasks get separate panels, each with its own y axis,
    because their metrics (a classifier's loss and a text generator's) are not comparable.
    Built from plain dicts without plotly's validation (see :func:`_unvalidated_figure`): with a
    thousand points the validated build took longer than the database queries of the whole page.
    """
    title = title or f"Trainable parameters vs {metric}"
    by_task = _points_by_task(points)
    if not by_task:
        return empty_figure(f"No adapter has a {metric!r} value yet.", title)
    tasks = sorted(by_task, key=_TASK_ORDER.index)
    variants = sorted({str(p.get("variant", "")) for members in by_task.values() for p in members})
    colours = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)}
    traces: list[dict[str, Any]] = []
    layout: dict[str, Any] = {
        "title": {"text": _scatter_title(title, tasks), "x": 0.01},
        "margin": {"l": 50, "r": 20, "t": 80 if len(tasks) > 1 else 50, "b": 45},
        "legend": {"orientation": "h", "y": -0.2},
        "height": 360,
    }
    headers: list[dict[str, Any]] = []
    gap = 0.06 if len(tasks) > 1 else 0.0  # room for the right panel's y-axis labels
    for k, task in enumerate(tasks):
        suffix = "" if k == 0 else str(k + 1)
        members = by_task[task]
        traces += _variant_traces(members, metric, suffix, colours, shown=k == 0)
        left, right = k / len(tasks) + (gap if k else 0), (k + 1) / len(tasks) - (gap if k < len(tasks) - 1 else 0)
        layout[f"xaxis{suffix}"] = {
            **_params_axis([p["params"] for p in members]),
            "title": {"text": "trainable parameters"},
            "domain": [left, right],
            "anchor": f"y{suffix}",
        }
        layout[f"yaxis{suffix}"] = {"title": {"text": metric}, "anchor": f"x{suffix}"}
        if len(tasks) > 1:  # a panel header naming the task, so no panel can be read as the other
            headers.append(_panel_header(f"{TASK_NAMES[task]} ({len(members):,})", suffix))
    if headers:  # an empty list would not survive plotly's round trip unchanged
        layout["annotations"] = headers
    return _unvalidated_figure(traces, layout)


def _points_by_task(points: Iterable[Mapping[str, Any]]) -> dict[str | None, list[Mapping[str, Any]]]:
    """The points having a value and a parameter count, grouped by task (an unknown task is None)."""
    groups: dict[str | None, list[Mapping[str, Any]]] = defaultdict(list)
    for point in points:
        if point.get("value") is not None and point.get("params"):
            task = point.get("task")
            groups[task if task in TASK_NAMES else None].append(point)
    return groups


def _scatter_title(title: str, tasks: list[str | None]) -> str:
    """The title, with a line saying why the tasks are apart when there are several (or which task it is)."""
    if len(tasks) == 1:
        return title if tasks[0] is None else f"{title} · {TASK_NAMES[tasks[0]].lower()} adapters"
    note = "Each task has its own panel: a classifier's loss and a text generator's are measured differently"
    return f"{title}<br><sub>{note} and cannot be compared.</sub>"


def _variant_traces(
    members: list[Mapping[str, Any]], metric: str, suffix: str, colours: dict[str, str], shown: bool
) -> list[dict[str, Any]]:
    """One marker trace per variant on the panel of axes ``x{suffix}``/``y{suffix}``.

    A variant keeps its colour in every panel and is listed in the legend once (its
    legend group toggles it in all panels); ``shown`` lists this panel's variants.
    """
    by_variant: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for point in members:
        by_variant[str(point.get("variant", ""))].append(point)
    return [
        {
            "type": "scatter",
            "x": [p["params"] for p in group],
            "y": [float(p["value"]) for p in group],
            "xaxis": f"x{suffix}",
            "yaxis": f"y{suffix}",
            "mode": "markers",
            "name": variant,
            "legendgroup": variant,
            "showlegend": shown,
            "text": [str(p.get("label", "")) for p in group],
            "marker": {"size": 11, "color": colours[variant]},
            "hovertemplate": "%{text}<br>%{x:,} params<br>" + metric + " %{y:.4g}<extra></extra>",
        }
        for variant, group in sorted(by_variant.items())
    ]


def _params_axis(params: list[int]) -> dict[str, Any]:
    """Axis settings for parameter counts whose tick labels never overlap.

    Counts spanning a decade or more go on a log axis with a tick per power of ten (1k, 10k,
    1M); a narrower span on a linear axis with a few SI-formatted ticks. Plotly's own log axis
    labelled 2.2M, 2.4M, 2.6M … over a narrow span, close enough to run into one another.
    """
    low, high = min(params), max(params)
    if high >= _LOG_AXIS_SPAN * low:
        return {"type": "log", "dtick": 1, "tickformat": "~s"}
    return {"type": "linear", "nticks": 5, "tickformat": "~s"}


def _panel_header(text: str, suffix: str) -> dict[str, Any]:
    """A bold label centred above the panel of axes ``x{suffix}``/``y{suffix}``."""
    return {
        "text": f"<b>{text}</b>",
        "xref": f"x{suffix} domain",
        "yref": f"y{suffix} domain",
        "x": 0.5,
        "y": 1.0,
        "xanchor": "center",
        "yanchor": "bottom",
        "showarrow": False,
    }


@cache
def _white_template() -> dict[str, Any]:
    """The plotly_white template as plain JSON, made once (setting it by name copies the template every time)."""
    import plotly.io as pio

    return pio.templates["plotly_white"].to_plotly_json()


def _unvalidated_figure(traces: list[dict[str, Any]], layout: dict[str, Any]) -> go.Figure:
    """A figure on the plotly_white template from plain dicts, skipping plotly's per-property validation.

    For figures with many points built by code whose properties tests check once
    (tests/ui/test_charts.py rebuilds it with validation); the result is an ordinary go.Figure.
    """
    return go.Figure({"data": traces, "layout": {**layout, "template": _white_template()}}, _validate=False)


def comparison_bars(result: Mapping[str, Any], title: str = "Models compared") -> go.Figure:
    """One bar panel per metric of an eval comparison (x: model; the best bar outlined, ↓/↑ in the panel title)."""
    from plotly.subplots import make_subplots

    rows = list(result.get("comparison") or [])
    if not rows:
        return empty_figure("No scores yet.", title)
    arrows = {"lower": "↓ lower is better", "higher": "↑ higher is better"}
    # Metric and direction on two lines: on one, the titles of six panels (a classification eval) overlap.
    fig = make_subplots(
        rows=1, cols=len(rows), subplot_titles=[f"{r['metric']}<br>{arrows[r['direction']]}" for r in rows]
    )
    from studio.evaluation.comparison import column_name

    for col, row in enumerate(rows, 1):
        keys = list(row["values"])
        fig.add_trace(
            go.Bar(
                x=[column_name(k) for k in keys],
                y=[row["values"][k] for k in keys],
                marker_line_width=[3 if k in row["best"] else 0 for k in keys],
                marker_line_color="black",
                name=row["metric"],
                showlegend=False,
            ),
            row=1,
            col=col,
        )
    fig.update_layout(title=title, template="plotly_white", margin=dict(l=40, r=20, t=100, b=40))
    return fig
