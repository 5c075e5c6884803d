"""The sweeps' median pruner: Optuna's median rule, made to work for trials of different lengths."""

from __future__ import annotations

import math
import statistics

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState


class LatestStepMedianPruner(optuna.pruners.BasePruner):
    """Optuna's median rule, measured against each finished trial at its latest step up to the trial's.

    Optuna's ``MedianPruner`` compares a trial only at steps that finished trials reached: a
    long trial running beside short ones (``max_steps`` searched, or one that was already past
    their last step when they finished) could never be pruned. Here a finished trial that
    stopped earlier counts with its last value. A trial is pruned when its best value so far is
    strictly worse than the median of the finished trials' values, once ``n_startup_trials``
    trials are finished (at least one) and the trial is past ``n_warmup_steps``.
    """

    def __init__(self, n_startup_trials: int, n_warmup_steps: int):
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(finished) < max(self.n_startup_trials, 1):
            return False
        own = [v for k, v in trial.intermediate_values.items() if k <= step]
        if any(math.isnan(v) for v in own):
            return True  # a diverged trial
        others = []
        for done in finished:
            steps = [k for k in done.intermediate_values if k <= step]
            if steps:
                others.append(done.intermediate_values[max(steps)])
        if not own or not others:
            return False
        median = statistics.median(others)
        if study.direction == StudyDirection.MAXIMIZE:
            return max(own) < median
        return min(own) > median
