"""Charts of a classification evaluation: ROC curves and confusion-matrix heatmaps (pure, no I/O).

Input is the eval job's result: each entry of ``result["models"]`` may carry ``roc`` (a list of
``{"label", "fpr", "tpr", "auroc"}``: one curve for two classes, one per class otherwise) and
``confusion`` (``{"labels", "matrix"}``, rows the true class, columns the predicted one). The
logistic-regression baseline is such an entry too, so it is drawn beside the models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go

from studio.charts import PALETTE, _base_layout, empty_figure


def _name(key: str) -> str:
    from studio.evaluation.comparison import column_name

    return column_name(key)


def roc_figure(result: Mapping[str, Any], title: str = "ROC curve") -> go.Figure:
    """Every model's ROC curve(s) on one chart, AUROC in the legend, the chance diagonal dashed."""
    models = [m for m in result.get("models") or [] if m.get("roc")]
    if not models:
        return empty_figure("No ROC curve: not a classification evaluation with accuracy.", title)
    fig = go.Figure()
    for i, model in enumerate(models):
        curves = model["roc"]
        for j, curve in enumerate(curves):
            # Several classes: one dotted-to-solid family per model, the class named after the model.
            suffix = f" · {curve['label']} vs rest" if len(curves) > 1 else ""
            fig.add_trace(
                go.Scatter(
                    x=curve["fpr"],
                    y=curve["tpr"],
                    mode="lines",
                    name=f"{_name(model['key'])}{suffix} (AUROC {curve['auroc']:.3f})",
                    line={"color": PALETTE[i % len(PALETTE)], "dash": ["solid", "dash", "dot", "dashdot"][j % 4]},
                )
            )
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"color": "#9ca3af", "dash": "dash"})
    )
    positive = models[0]["roc"][0]["label"] if len(models[0]["roc"]) == 1 else None
    subtitle = f" (positive class {positive})" if positive is not None else " (one vs rest)"
    _base_layout(fig, title + subtitle, "false positive rate", "true positive rate")
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return fig


def confusion_figure(result: Mapping[str, Any], title: str = "Confusion matrix") -> go.Figure:
    """One heatmap per model (rows: true class, columns: predicted), counts written in the cells."""
    from plotly.subplots import make_subplots

    models = [m for m in result.get("models") or [] if m.get("confusion", {}).get("matrix")]
    if not models:
        return empty_figure("No confusion matrix: not a classification evaluation with accuracy.", title)
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=[_name(m["key"]) for m in models])
    for col, model in enumerate(models, 1):
        labels = [str(label) for label in model["confusion"]["labels"]]
        matrix = model["confusion"]["matrix"]
        fig.add_trace(
            go.Heatmap(
                z=matrix,
                x=[f"pred {label}" for label in labels],
                y=[f"true {label}" for label in labels],
                text=[[str(v) for v in row] for row in matrix],
                texttemplate="%{text}",
                colorscale="Blues",
                showscale=False,
            ),
            row=1,
            col=col,
        )
        fig.update_yaxes(autorange="reversed", row=1, col=col)  # the first class on top, as a table reads
    fig.update_layout(
        title={"text": title, "x": 0.01},
        template="plotly_white",
        height=340,
        margin={"l": 70, "r": 20, "t": 80, "b": 40},
    )
    return fig
