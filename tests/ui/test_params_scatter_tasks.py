"""The Adapters tab's parameters-vs-metric chart keeps tasks apart and its tick labels readable.

A classifier's eval_loss (cross-entropy over its labels) and a text generator's (per-token
language-model loss) are not comparable, yet they used to share one y axis; and over a narrow
span of parameter counts the log x axis labelled "2.2M 2.4M 2.6M" close enough to overlap.
"""

from __future__ import annotations

import json

import plotly.graph_objects as go

from studio import charts
from studio.services.adapters import task_of_dir


def point(label, variant, params, value, task):
    return {"label": label, "variant": variant, "params": params, "value": value, "task": task}


MIXED = [
    point("gen-a", "lora", 2_200_000, 2.9, "causal-lm"),
    point("gen-b", "dora", 2_600_000, 2.7, "causal-lm"),
    point("cls-a", "lora", 2_400_000, 0.4, "classification"),
]


def test_each_task_gets_its_own_panel_and_y_axis():
    fig = charts.params_metric_scatter(MIXED, "eval_loss")
    panels = {(t.name, t.xaxis, t.yaxis): list(t.y) for t in fig.data}
    assert panels == {
        ("dora", "x", "y"): [2.7],
        ("lora", "x", "y"): [2.9],
        ("lora", "x2", "y2"): [0.4],
    }
    headers = [a.text for a in fig.layout.annotations]
    assert headers == ["<b>Text generation (2)</b>", "<b>Classification (1)</b>"]
    assert fig.layout.xaxis.domain[1] < fig.layout.xaxis2.domain[0]  # side by side, not overlapping
    assert (fig.layout.yaxis2.anchor, fig.layout.xaxis2.anchor) == ("x2", "y2")
    assert "cannot be compared" in fig.layout.title.text


def test_a_variant_is_listed_once_and_keeps_its_colour_in_both_panels():
    fig = charts.params_metric_scatter(MIXED, "eval_loss")
    loras = [t for t in fig.data if t.name == "lora"]
    assert [t.showlegend for t in loras] == [True, False]
    assert {t.legendgroup for t in loras} == {"lora"}
    assert loras[0].marker.color == loras[1].marker.color


def test_one_task_is_one_panel_named_in_the_title():
    fig = charts.params_metric_scatter([p for p in MIXED if p["task"] == "causal-lm"], "eval_loss", title="T")
    assert {t.xaxis for t in fig.data} == {"x"} and not fig.layout.annotations
    assert fig.layout.title.text == "T · text generation adapters"


def test_points_without_a_task_are_drawn_apart_as_unknown():
    fig = charts.params_metric_scatter([*MIXED, point("old", "lora", 10, 1.0, None)], "eval_loss")
    assert [a.text for a in fig.layout.annotations][-1] == "<b>Task unknown (1)</b>"
    assert len({t.xaxis for t in fig.data}) == 3


def test_a_narrow_span_of_parameters_gets_a_few_linear_ticks():
    fig = charts.params_metric_scatter(MIXED, "eval_loss")
    axis = fig.layout.xaxis  # 2.2M to 2.6M: plotly's log ticks there overlapped
    assert (axis.type, axis.nticks, axis.tickformat) == ("linear", 5, "~s")


def test_a_wide_span_gets_one_log_tick_per_power_of_ten():
    points = [point("a", "lora", 1_000, 1.0, "causal-lm"), point("b", "lora", 3_000_000, 2.0, "causal-lm")]
    axis = charts.params_metric_scatter(points, "eval_loss").layout.xaxis
    assert (axis.type, axis.dtick, axis.tickformat) == ("log", 1, "~s")


def test_the_split_figure_is_valid_for_plotly():
    fig = charts.params_metric_scatter(MIXED, "eval_loss")
    checked = go.Figure(fig.to_plotly_json())  # raises on an unknown or ill-typed property
    assert checked.to_plotly_json() == fig.to_plotly_json()


def test_the_task_is_read_from_the_adapter_files(tmp_path):
    classifier, generator, mixture, gone = (tmp_path / n for n in ("cls", "gen", "mix", "gone"))
    for directory in (classifier, generator, mixture):
        directory.mkdir()
    (classifier / "adapter_config.json").write_text(json.dumps({"task_type": "SEQ_CLS"}))
    (generator / "adapter_config.json").write_text(json.dumps({"task_type": "CAUSAL_LM"}))
    (mixture / "mixture.json").write_text("{}")
    assert task_of_dir(classifier) == "classification"
    assert task_of_dir(generator) == "causal-lm"
    assert task_of_dir(mixture) == "causal-lm"
    assert task_of_dir(gone) is None
