"""Plotly charts of a federated run: each client's label mix (shown before the run starts)."""

from __future__ import annotations

from typing import Any


def client_mix_chart(mix: dict[str, dict[str, int]], title: str = "Rows per client and label") -> Any:
    """A stacked bar per client, one colour per label (from :func:`studio.federated.partition.label_mix`)."""
    import plotly.graph_objects as go

    clients = list(mix)
    labels = sorted({label for counts in mix.values() for label in counts})
    fig = go.Figure()
    for label in labels:
        fig.add_bar(name=str(label), x=clients, y=[mix[c].get(label, 0) for c in clients])
    fig.update_layout(barmode="stack", title=title, xaxis_title="client", yaxis_title="rows", legend_title="label")
    return fig
