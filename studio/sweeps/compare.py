"""A sweep in compare mode: its trials (one per variant) read back as the variant comparison of studio.comparison."""

from __future__ import annotations

from typing import Any

from studio.comparison import comparison_markdown, overlay_figure, run_metrics, table_rows
from studio.schema import SWEEP_VARIANT_KEY


def comparison_runs(registry: Any, sweep_job_id: int) -> list[dict[str, Any]]:
    """One run per trial of the sweep's study, in trial order: the variant, its job's status and curves."""
    from studio.sweeps.driver import JOB_ID_ATTR, load_study

    runs = []
    for trial in load_study(registry, sweep_job_id).get_trials(deepcopy=False):
        job_id = trial.user_attrs.get(JOB_ID_ATTR)
        if job_id is None:  # asked but not yet submitted
            continue
        job = registry.get_job(int(job_id))
        run: dict[str, Any] = {
            "variant": trial.params.get(SWEEP_VARIANT_KEY, job.request.get("variant")),
            "trial": trial.number,
            "job_id": job.id,
            "status": job.status,
            "error": job.error,
        }
        # A running trial's curves so far draw in the overlay too; its table cells wait for it to finish.
        run.update(run_metrics(job, registry.metrics(job.id)))
        runs.append(run)
    return runs


def budget_lines(request: dict[str, Any]) -> list[str]:
    """The matched budget of a comparison sweep's request (its job's stored request), as Markdown lines."""
    hyper = request.get("hyper") or {}
    preset = request.get("variant_preset")
    return [
        f"Base model `{request.get('base_model')}`, dataset #{request.get('dataset_id')}, task {request.get('task')}.",
        f"Budget for every variant: {hyper.get('max_steps')} steps × batch {hyper.get('batch_size')}, max_length "
        f"{hyper.get('max_length')}, lr {hyper.get('learning_rate')}, seed {request.get('seed')}, "
        f"{hyper.get('validation_fraction', 0):.0%} of the rows held out for validation "
        f"(every {hyper.get('eval_every')} steps).",
        "Each variant at its own defaults"
        + (f", with its `{preset}` preset where it declares one." if preset else ".")
        + (f" Fixed variant parameters: {request['variant_params']}." if request.get("variant_params") else ""),
    ]


def comparison_report(registry: Any, sweep_job_id: int) -> dict[str, Any]:
    """``{runs, headers, rows, figure, markdown}`` of comparison sweep ``sweep_job_id`` (KeyError: no study yet)."""
    job = registry.get_job(sweep_job_id)
    runs = comparison_runs(registry, sweep_job_id)
    classification = job.request.get("task") == "classification"
    headers, rows = table_rows(runs, classification)
    title = f"Variant comparison: sweep #{sweep_job_id} ({job.status})"
    return {
        "runs": runs,
        "headers": headers,
        "rows": rows,
        "figure": overlay_figure(runs),
        "markdown": comparison_markdown(runs, title, budget_lines(job.request), classification),
    }
