"""A sweep's charts: Optuna's own Plotly figures of the study, for the Sweep tab."""

from __future__ import annotations

import contextlib
from typing import Any

from studio.charts import empty_figure
from studio.sweeps.driver import load_study


def sweep_figures(registry: Any, sweep_job_id: int) -> dict[str, Any]:
    """``{"history", "parallel", "importances"}`` Plotly figures of sweep job ``sweep_job_id``'s study.

    Optuna draws them; a chart that needs more finished trials than there are (importances need
    two complete trials with different values) is left out rather than drawn empty.
    """
    import optuna.visualization as vis
    from optuna.trial import TrialState

    study = load_study(registry, sweep_job_id)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        # Said on the chart; Optuna would draw empty axes and log "There are no complete trials." on every
        # refresh of the Sweep tab (every 10 s).
        return {"history": empty_figure("No trial has finished yet: the history appears after the first one.")}
    figures: dict[str, Any] = {"history": vis.plot_optimization_history(study)}
    figures["parallel"] = vis.plot_parallel_coordinate(study)
    if len(complete) >= 2 and len({t.value for t in complete}) > 1 and study.best_trial.params:
        # e.g. one searched setting took one value in every trial: no importances to draw
        with contextlib.suppress(RuntimeError, ValueError):
            figures["importances"] = vis.plot_param_importances(study)
    return figures


def trials_table(registry: Any, sweep_job_id: int) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, job and adapter ids, and the settings tried."""
    study = load_study(registry, sweep_job_id)
    return [
        {
            "trial": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            "job": t.user_attrs.get("job_id"),
            "adapter": t.user_attrs.get("adapter_id"),
            **t.params,
        }
        for t in study.get_trials(deepcopy=False)
    ]
