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


ROUND_METRICS = ("val_loss", "epsilon", "bytes_up", "bytes_down")


def _by_name(points: Any) -> dict[str, list[tuple[float, float]]]:
    """{metric: [(round, value), ...]} sorted by round, from registry metric rows or dicts."""
    out: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        name = p["name"] if isinstance(p, dict) else p.name
        step = p["step"] if isinstance(p, dict) else p.step
        value = p["value"] if isinstance(p, dict) else p.value
        out.setdefault(name, []).append((step, float(value)))
    return {name: sorted(series) for name, series in out.items()}


def round_charts(points: Any, title: str = "") -> dict[str, Any]:
    """The per-round charts of a federated job from its metrics (x = round; round 0 before training).

    Keys: ``loss`` (global validation loss and each client's local loss), ``epsilon`` (the largest ε
    spent so far; empty without DP) and ``bytes`` (sent up and down per round).
    """
    import plotly.graph_objects as go

    from studio.charts import empty_figure

    series = _by_name(points)
    loss = go.Figure()
    if "val_loss" in series:
        x, y = zip(*series["val_loss"], strict=True)
        loss.add_scatter(x=x, y=y, mode="lines+markers", name="global validation loss", line={"width": 3})
    clients = sorted((n for n in series if n.startswith("client_") and n.endswith("_loss")), key=_client_number)
    for name in clients:
        x, y = zip(*series[name], strict=True)
        loss.add_scatter(
            x=x, y=y, mode="lines+markers", name=f"client {_client_number(name)} local loss", line={"dash": "dot"}
        )
    loss.update_layout(title=f"{title}Loss per round", xaxis_title="round", yaxis_title="loss", template="plotly_white")
    _round_axis(loss, series, ["val_loss", *clients])
    if not loss.data:
        loss = empty_figure("No round has finished yet: the curves appear after round 0 (before training).", "Loss")
    if "epsilon" in series:
        x, y = zip(*series["epsilon"], strict=True)
        eps = go.Figure(go.Scatter(x=x, y=y, mode="lines+markers", name="ε spent (largest over clients)"))
        eps.update_layout(title=f"{title}Privacy spent", xaxis_title="round", yaxis_title="ε", template="plotly_white")
        _round_axis(eps, series, ["epsilon"])
    else:
        eps = empty_figure("No differential privacy in this job (or no round has finished yet).", "Privacy spent")
    return {"loss": loss, "epsilon": eps, "bytes": _bytes_chart(series, title)}


def _bytes_chart(series: dict[str, list[tuple[float, float]]], title: str) -> Any:
    """Bytes sent up and down per round, or a blank chart that says why (no round has sent anything yet)."""
    import plotly.graph_objects as go

    from studio.charts import empty_figure

    names = [n for n in ("bytes_up", "bytes_down") if n in series]
    if not names:
        # Without a trace plotly draws bare axes running to -1, which reads as a broken chart.
        return empty_figure("No round has finished yet: the bytes appear after the first training round.", "Bytes")
    sent = go.Figure()
    for name, label in (("bytes_up", "clients → server"), ("bytes_down", "server → clients")):
        if name in series:
            x, y = zip(*series[name], strict=True)
            sent.add_bar(x=x, y=y, name=label)
    sent.update_layout(
        title=f"{title}Bytes sent per round",
        xaxis_title="round",
        yaxis_title="bytes",
        template="plotly_white",
        barmode="group",
    )
    _round_axis(sent, series, names)
    return sent


def _round_axis(fig: Any, series: dict[str, list[tuple[float, float]]], names: list[str]) -> None:
    """Whole-round ticks from the first round shown to the last (plotly's auto axis showed -1, -0.5, 0.5)."""
    rounds = [step for name in names for step, _ in series.get(name, [])]
    if not rounds:
        return
    first, last = min(rounds), max(rounds)
    # Half a round either side keeps the end markers and bars whole; tick0 puts the first tick on the first round.
    fig.update_xaxes(tick0=first, dtick=1, tickformat="d", range=[first - 0.5, last + 0.5])


def _client_number(name: str) -> int:
    return int(name.split("_")[1])
