"""The Arena leaderboard chart: each contestant's Elo-like score with its 95 % bootstrap interval.

A pure function like :mod:`studio.charts`: rows (mappings or objects with ``label``, ``score``,
``low``, ``high``, ``games``) in, a plotly Figure out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import plotly.graph_objects as go

from studio.charts import PALETTE, _base_layout, _get, empty_figure


def arena_figure(rows: Iterable[Any], title: str = "Arena leaderboard") -> go.Figure:
    """Horizontal points, best on top, with asymmetric error bars from the interval; the base's 1000 marked."""
    rows = [r for r in rows if _get(r, "games", 0)]
    if not rows:
        return empty_figure("No votes yet for this base model: battle and vote to fill the board.", title)
    rows = sorted(rows, key=lambda r: _get(r, "score"))  # plotly draws the first category at the bottom
    scores = [float(_get(r, "score")) for r in rows]
    fig = go.Figure(
        go.Scatter(
            x=scores,
            y=[str(_get(r, "label")) for r in rows],
            mode="markers",
            marker={"size": 10, "color": PALETTE[0]},
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [float(_get(r, "high")) - s for r, s in zip(rows, scores, strict=True)],
                "arrayminus": [s - float(_get(r, "low")) for r, s in zip(rows, scores, strict=True)],
                "color": PALETTE[0],
            },
            customdata=[[_get(r, "games"), _get(r, "low"), _get(r, "high")] for r in rows],
            hovertemplate="%{y}<br>score %{x:.0f} (95% CI %{customdata[1]:.0f}–%{customdata[2]:.0f})"
            "<br>%{customdata[0]} games<extra></extra>",
        )
    )
    fig.add_vline(x=1000, line_dash="dot", line_color="#9ca3af")
    _base_layout(fig, title, "score (base model = 1000; 95% bootstrap interval)", "")
    fig.update_layout(height=max(260, 60 + 40 * len(rows)), showlegend=False)
    return fig
