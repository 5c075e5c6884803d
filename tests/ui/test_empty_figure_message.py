"""A blank chart's message sits in the middle of the chart, whatever range Plotly gives its empty axes."""

from __future__ import annotations

from studio.charts import empty_figure


def test_the_message_is_centred_on_the_chart_not_on_a_data_point():
    # A data x of 0.5 on the empty axes (-1..6) put a long message a fifth of the way across, cut off at the left
    # edge of half-width charts (the Federated tab's "No round finished yet: …").
    (note,) = empty_figure(
        "No round finished yet: the curves appear after round 0 (before training)."
    ).layout.annotations
    assert (note.xref, note.yref) == ("paper", "paper")
    assert (note.x, note.y) == (0.5, 0.5)
    assert (note.xanchor, note.yanchor) == ("center", "middle")
