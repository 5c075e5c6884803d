"""The per-round charts: whole-round ticks from the first round, and blank charts that say why they are blank."""

from __future__ import annotations

from studio.federated.charts import round_charts


def _rows(by_round: dict[int, dict[str, float]]) -> list[dict]:
    return [{"name": n, "step": step, "value": v} for step, values in by_round.items() for n, v in values.items()]


def test_the_round_axis_has_whole_round_ticks_starting_at_the_first_round():
    # One point at round 0 gave plotly's auto axis -1, -0.5, 0, 0.5, 1: fractional rounds that never happen.
    charts = round_charts(_rows({0: {"val_loss": 3.0, "epsilon": 0.0, "bytes_up": 10.0, "bytes_down": 20.0}}))
    for key in ("loss", "epsilon", "bytes"):
        axis = charts[key].layout.xaxis
        assert (axis.dtick, axis.tick0, axis.tickformat) == (1, 0, "d"), key
        assert tuple(axis.range) == (-0.5, 0.5), key


def test_the_axis_starts_at_the_first_round_with_data():
    charts = round_charts(_rows({1: {"bytes_up": 10.0}, 2: {"bytes_up": 12.0}, 3: {"bytes_up": 11.0}}))
    axis = charts["bytes"].layout.xaxis
    assert axis.tick0 == 1
    assert tuple(axis.range) == (0.5, 3.5)


def test_charts_without_data_say_why_they_are_blank():
    # Bytes before any round showed bare axes running to -1 and no word about why.
    charts = round_charts(_rows({0: {"val_loss": 3.0}}))
    (note,) = charts["bytes"].layout.annotations
    assert "no round has finished yet" in note.text.lower()
    assert not charts["bytes"].data
    empty = round_charts([])
    for key in ("loss", "epsilon", "bytes"):
        assert not empty[key].data, key
        assert "no round has finished yet" in empty[key].layout.annotations[0].text.lower(), key
