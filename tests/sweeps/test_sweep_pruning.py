"""The sweeps' median pruner on hand-made curves (an in-memory Optuna study, no training)."""

from __future__ import annotations

import optuna
import pytest

from studio.sweeps.pruning import LatestStepMedianPruner


def study_with(curves: list[list[float]], direction: str = "minimize", startup: int = 1, warmup: int = 0):
    """A study whose finished trials followed ``curves`` (value at steps 1, 2, ...)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, pruner=LatestStepMedianPruner(startup, warmup))
    for curve in curves:
        trial = study.ask()
        for step, value in enumerate(curve, start=1):
            trial.report(value, step)
        study.tell(trial, curve[-1])
    return study


def running(study, curve: list[float]) -> bool:
    """Whether a trial that reported ``curve`` so far is pruned now."""
    trial = study.ask()
    for step, value in enumerate(curve, start=1):
        trial.report(value, step)
    return trial.should_prune()


def test_strictly_worse_than_the_median_is_pruned_equal_is_not():
    study = study_with([[4.0, 3.0, 2.0]])
    assert running(study, [4.5]) is True
    assert running(study, [4.0, 3.0]) is False  # the same curve as the finished trial
    assert running(study, [4.5, 3.5, 1.5]) is False  # its best so far beats the median at step 3


def test_a_trial_longer_than_the_finished_ones_is_compared_with_their_last_value():
    study = study_with([[4.0, 3.0]])
    assert running(study, [5.0, 5.0, 5.0, 5.0]) is True  # Optuna's MedianPruner sees no one at step 4
    assert running(study, [3.0, 2.9, 2.8, 2.7]) is False
    assert optuna.pruners.MedianPruner(n_startup_trials=1).prune(study, study.trials[-1]) is False


def test_startup_trials_and_warmup_steps_hold_pruning_back():
    assert running(study_with([[4.0, 3.0]], startup=2), [9.0, 9.0]) is False  # one finished of two needed
    assert running(study_with([[4.0, 3.0], [4.0, 3.0]], startup=2), [9.0, 9.0]) is True
    assert running(study_with([[4.0, 3.0, 2.0]], warmup=3), [9.0, 9.0]) is False
    assert running(study_with([[4.0, 3.0, 2.0]], warmup=3), [9.0, 9.0, 9.0]) is True
    assert running(study_with([[4.0]], startup=0), [9.0]) is True  # 0 still means: after one finished trial
    assert running(study_with([], startup=0), [9.0]) is False


@pytest.mark.parametrize("direction, worse, better", [("maximize", 0.2, 0.9), ("minimize", 0.9, 0.2)])
def test_the_direction_decides_what_worse_means(direction, worse, better):
    study = study_with([[0.5, 0.6]], direction=direction)
    assert running(study, [worse, worse]) is True and running(study, [better, better]) is False


def test_a_diverged_trial_is_pruned():
    assert running(study_with([[4.0, 3.0]]), [float("nan")]) is True
