"""studio.charts: the figures carry the data they were given."""

from __future__ import annotations

import plotly.graph_objects as go

from studio import charts


def metric(step, name, value, elapsed=None):
    return {"step": step, "name": name, "value": value, "elapsed_seconds": elapsed}


def test_loss_figure_has_training_and_validation_curves_sorted_by_step():
    rows = [
        metric(2, "loss", 1.5),
        metric(1, "loss", 2.0),
        metric(2, "eval_loss", 1.7),
        metric(2, "learning_rate", 1e-4),
    ]
    fig = charts.loss_figure(rows)
    train, val = fig.data
    assert (train.name, list(train.x), list(train.y)) == ("training loss", [1, 2], [2.0, 1.5])
    assert (val.name, list(val.x), list(val.y)) == ("validation loss", [2], [1.7])


def test_loss_figure_without_rows_explains_itself():
    fig = charts.loss_figure([])
    assert not fig.data and "No loss reported yet" in fig.layout.annotations[0].text


def test_convergence_overlay_against_step_and_wall_time():
    series = {
        "a": [metric(1, "loss", 2.0, 30.0), metric(2, "loss", 1.0, 60.0)],
        "b": [metric(1, "loss", 3.0, 6.0)],
        "empty": [],
    }
    by_step = charts.convergence_figure(series, "step")
    assert [t.name for t in by_step.data] == ["a", "b"]
    assert list(by_step.data[0].x) == [1, 2]
    by_time = charts.convergence_figure(series, "time")
    assert list(by_time.data[0].x) == [0.5, 1.0] and list(by_time.data[1].x) == [0.1]
    assert by_time.layout.xaxis.title.text == "wall time (min)"


def test_split_module_reads_layer_and_type():
    assert charts.split_module("model.layers.11.self_attn.q_proj") == (11, "q_proj")
    assert charts.split_module("transformer.h.0.mlp.c_fc") == (0, "c_fc")
    assert charts.split_module("score") == (-1, "score")


def test_rank_heatmap_has_one_frame_per_step_and_a_slider():
    snaps = [
        {"step": s, "module": f"model.layers.{layer}.self_attn.{t}", "rank": r}
        for s, r0 in ((10, 8), (20, 4))
        for layer in (0, 1)
        for t, r in (("q_proj", r0 + layer), ("v_proj", r0 - layer))
    ]
    fig = charts.rank_heatmap(snaps)
    assert [f.name for f in fig.frames] == ["10", "20"]
    assert [s.label for s in fig.layout.sliders[0].steps] == ["10", "20"]
    heat = fig.data[0]  # the last step is shown first
    assert list(heat.y) == ["q_proj", "v_proj"] and list(heat.x) == ["0", "1"]
    assert [list(row) for row in heat.z] == [[4, 5], [4, 3]]
    assert heat.zmax == 9  # one colour scale across all steps
    assert [list(row) for row in fig.frames[0].data[0].z] == [[8, 9], [8, 7]]


def test_rank_heatmap_without_snapshots_is_an_explained_empty_chart():
    assert "did not change" in charts.rank_heatmap([]).layout.annotations[0].text


def test_final_rank_bars_group_by_module_type_in_layer_order():
    ranks = {"model.layers.1.mlp.up_proj": 2, "model.layers.0.mlp.up_proj": 6, "model.layers.0.self_attn.q_proj": 4}
    fig = charts.final_rank_bars(ranks)
    by_type = {t.name: (list(t.x), list(t.y)) for t in fig.data}
    assert by_type == {"q_proj": (["L0.q_proj"], [4]), "up_proj": (["L0.up_proj", "L1.up_proj"], [6, 2])}
    assert list(fig.layout.xaxis.categoryarray) == ["L0.q_proj", "L0.up_proj", "L1.up_proj"]


def test_params_metric_scatter_colours_by_variant_and_skips_missing_values():
    points = [
        {"label": "a", "variant": "lora", "params": 1000, "value": 1.2},
        {"label": "b", "variant": "dora", "params": 2000, "value": 1.1},
        {"label": "c", "variant": "lora", "params": 4000, "value": None},
    ]
    fig = charts.params_metric_scatter(points, "eval_loss")
    assert {t.name: list(t.x) for t in fig.data} == {"dora": [2000], "lora": [1000]}
    assert fig.layout.xaxis.type == "linear"  # counts within one decade (tests/ui/test_params_scatter_tasks.py)
    assert charts.params_metric_scatter([], "eval_loss").layout.annotations


def test_params_metric_scatter_is_a_valid_figure_on_the_white_template():
    # Built without plotly's validation: a validated rebuild of the same JSON must accept it unchanged
    # and look as the validated charts do (plotly_white, axis titles).
    points = [
        {"label": f"#{i}", "variant": "lora" if i % 2 else "dora", "params": 10 * i, "value": i} for i in range(1, 9)
    ]
    fig = charts.params_metric_scatter(points, "eval_loss", title="t")
    checked = go.Figure(fig.to_plotly_json())  # raises on an unknown or ill-typed property
    assert checked.to_plotly_json() == fig.to_plotly_json()
    reference = charts._base_layout(go.Figure(), "t", "trainable parameters", "eval_loss")
    assert checked.layout.template == reference.layout.template
    assert (checked.layout.xaxis.title.text, checked.layout.yaxis.title.text) == ("trainable parameters", "eval_loss")
