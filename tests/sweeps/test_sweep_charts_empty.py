"""The Sweep tab's charts before any trial has finished: a chart that says so, and no log line per refresh."""

from __future__ import annotations

import optuna

from studio.sweeps.charts import sweep_figures
from studio.sweeps.driver import study_name


def test_no_finished_trial_gives_a_chart_that_says_so_and_logs_nothing(registry, capfd):
    study = optuna.create_study(study_name=study_name(7), storage=registry.optuna_storage())
    running = study.ask({"r": optuna.distributions.IntDistribution(2, 8)})
    capfd.readouterr()
    figures = sweep_figures(registry, 7)
    assert list(figures) == ["history"]
    [note] = figures["history"].layout.annotations
    assert note.text.startswith("No trial has finished yet")
    assert "There are no complete trials" not in capfd.readouterr().err  # Optuna's warning, every 10 s before
    # Once one has finished, Optuna draws the history and the parallel coordinates.
    study.tell(running, 1.25)
    figures = sweep_figures(registry, 7)
    assert {"history", "parallel"} <= set(figures)
    assert list(figures["history"].data[0].y) == [1.25]
