"""RecLoRA charts: the learned gate α(u) of each user over the K meta-LoRAs.

A pure function like :mod:`studio.charts`: user ids and their α rows in (from
:func:`studio.composition.reclora_users.users_alpha`), a plotly Figure out.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from studio.charts import _base_layout, empty_figure


def gate_heatmap(
    users: Sequence[str], alpha: Sequence[Sequence[float]], title: str = "Learned gates α(u)"
) -> go.Figure:
    """Heatmap, one row per user and one column per meta-LoRA, colour = α(u)_k (each row sums to 1)."""
    rows = [[float(x) for x in row] for row in alpha]
    if not users or not rows:
        return empty_figure("No users to show: pick a personalised adapter (or clear the search).", title)
    k = len(rows[0])
    columns = [f"meta-LoRA {j + 1}" for j in range(k)]
    fig = go.Figure(
        go.Heatmap(
            z=rows,
            x=columns,
            y=[str(u) for u in users],
            zmin=0.0,
            zmax=1.0,
            colorscale="Blues",
            colorbar={"title": "α"},
            hovertemplate="user %{y}<br>%{x}: α = %{z:.3f}<extra></extra>",
        )
    )
    _base_layout(fig, title, "meta-LoRA", "user")
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_layout(height=max(300, 90 + 18 * len(rows)), legend={})
    return fig
