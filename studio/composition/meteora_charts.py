"""MeteoRA charts: which expert each token chose in each layer, and how much each task uses each expert.

Pure functions like :mod:`studio.charts`: plain data in (from
:func:`studio.composition.meteora_training.prompt_routing` and
:func:`~studio.composition.meteora_training.routing_report`), a plotly Figure out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from studio.charts import PALETTE, _base_layout, empty_figure, split_module


def _discrete_scale(n: int) -> list[list[Any]]:
    """A colour scale with one flat band per expert index 0..n-1 (z runs from -0.5 to n-0.5)."""
    scale: list[list[Any]] = []
    for j in range(n):
        color = PALETTE[j % len(PALETTE)]
        scale += [[j / n, color], [(j + 1) / n, color]]
    return scale


def module_label(name: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``L3 q_proj`` (the full name for modules outside layers)."""
    layer, kind = split_module(name)
    return f"L{layer} {kind}" if layer >= 0 else name


def routing_heatmap(
    tokens: Sequence[str],
    choices: Mapping[str, Sequence[int]],
    expert_names: Sequence[str],
    title: str = "Chosen expert per token and layer",
) -> go.Figure:
    """Heatmap: one column per token, one row per gated module (first layer on top), colour = top-1 expert.

    ``choices``: module name -> the top-1 expert index of every token (in the model's module order).
    """
    if not tokens or not choices:
        return empty_figure("Run a prompt through the mixture to see which expert each token chose.", title)
    modules = list(choices)
    n = len(expert_names)
    z = [[int(e) for e in choices[m]] for m in modules]
    columns = [f"{i}:{tok}" for i, tok in enumerate(tokens)]  # unique x categories even for repeated tokens
    names = [[expert_names[e] for e in row] for row in z]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=columns,
            y=[module_label(m) for m in modules],
            zmin=-0.5,
            zmax=n - 0.5,
            colorscale=_discrete_scale(n),
            customdata=names,
            colorbar={
                "title": "expert",
                "tickvals": list(range(n)),
                "ticktext": list(expert_names),
            },
            hovertemplate="token %{x}<br>%{y}<br>expert %{customdata}<extra></extra>",
        )
    )
    _base_layout(fig, title, "token", "")
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickvals=columns, ticktext=list(tokens), tickangle=-45)
    fig.update_layout(height=max(320, 80 + 14 * len(modules)), legend={})
    return fig


def expert_usage_figure(
    usage: Sequence[Sequence[float]],
    task_names: Sequence[str],
    expert_names: Sequence[str],
    title: str = "Expert usage per task",
) -> go.Figure:
    """Grouped bars: for each task, the share of its tokens' top-1 choices (all layers) that went to each expert.

    ``usage[t][e]``: as in ``routing_report(...)["usage"]``; a well-trained mixture shows a tall
    bar where the task's own expert is.
    """
    if not usage:
        return empty_figure("Evaluate the mixture's routing on labelled prompts to see expert usage.", title)
    fig = go.Figure(
        [
            go.Bar(
                name=str(expert),
                x=list(task_names),
                y=[float(row[e]) for row in usage],
                marker_color=PALETTE[e % len(PALETTE)],
                hovertemplate=f"task %{{x}}<br>expert {expert}: %{{y:.1%}}<extra></extra>",
            )
            for e, expert in enumerate(expert_names)
        ]
    )
    _base_layout(fig, title, "task", "share of top-1 choices")
    fig.update_layout(barmode="group", yaxis={"range": [0, 1], "tickformat": ".0%"})
    return fig
