"""The sweep driver on a tiny model: real train jobs run in this process, an Optuna study in the registry."""

from __future__ import annotations

import pytest
from conftest_training import chat_rows, cpu_device, register_chat_dataset, write_jsonl

from studio.jobs.runner import WorkerIdentity
from studio.progress import MemoryReporter
from studio.schema import Choices, SweepRequest, TrainingHyperParams
from studio.services.jobs import JobService
from studio.sweeps.driver import LocalLauncher, load_study, run_sweep
from studio.sweeps.space import check_space

GOOD, BAD = 0.05, 1e-9  # learning rates: BAD leaves the validation loss where it started
LONG = 200  # steps of a trial that only stops early if it is pruned


class NoQueue:
    """Stands in for Celery: the trials run on the launcher's threads."""

    def send(self, job_id: int) -> str:
        return f"task-{job_id}"

    def revoke(self, task_id) -> None:
        pass


class CrashAfter(MemoryReporter):
    """A reporter whose driver 'dies' (an exception that is no cancellation) at its n-th cancellation check."""

    def __init__(self, checks: int):
        super().__init__()
        self.checks_left = checks

    def check_cancelled(self) -> None:
        self.checks_left -= 1
        if self.checks_left < 0:
            raise RuntimeError("the sweep's process died")


@pytest.fixture
def dataset_id(registry, tmp_path):
    return register_chat_dataset(registry, write_jsonl(tmp_path / "data.jsonl", chat_rows(12))).id


def make_sweep(base_dir, dataset_id, max_steps=12, **fields) -> SweepRequest:
    hyper = TrainingHyperParams(
        max_steps=max_steps, batch_size=4, max_length=64, warmup_ratio=0.0, validation_fraction=0.25,
        log_every=1, eval_every=1, save_every=1000, learning_rate=GOOD, precision="fp32",
    )  # fmt: skip
    # No dropout: trials running side by side share torch's global RNG, and equal settings must give equal curves.
    defaults = dict(
        variant_params={"lora_dropout": 0.0},
        space={"learning_rate": Choices(choices=[GOOD, BAD])},
        n_trials=6,
        parallel=2,
        poll_seconds=0.05,
    )
    return SweepRequest(dataset_id=dataset_id, base_model=str(base_dir), hyper=hyper, **{**defaults, **fields})


def sweep_job(registry, request) -> int:
    return registry.create_job(kind="sweep", request=request.model_dump(mode="json"), schema_version=1).id


def launcher(registry, settings) -> LocalLauncher:
    return LocalLauncher(JobService(registry, NoQueue()), settings, WorkerIdentity("test-sweep", cpu_device()))


def train_jobs(registry):
    return registry.list_jobs(kind="train")


@pytest.mark.slow
def test_a_six_trial_sweep_runs_two_at_a_time_and_prunes_the_bad_trials(registry, settings, dataset_id, tiny_llama_dir):
    from optuna.trial import TrialState

    # Two good trials first, then trials that cannot learn: once a good one is complete, the median pruner
    # (one startup trial) stops each bad one at its first validation step, which is worse than the median.
    # The bad ones are long (LONG steps), so the driver certainly sees them running and stops them early.
    # The good ones are the same point (listed thrice, tried thrice) and give the same curve, even the two that
    # start together on threads of this process: a curve equal to the median's is never pruned.
    good, bad = {"learning_rate": GOOD, "max_steps": 8}, {"learning_rate": BAD, "max_steps": LONG}
    first = [good, good, bad, bad, good, bad]
    space = {"learning_rate": Choices(choices=[GOOD, BAD]), "max_steps": Choices(choices=[8, LONG])}
    request = make_sweep(tiny_llama_dir, dataset_id, space=space, first_trials=first, pruner_startup_trials=1)
    job_id = sweep_job(registry, request)
    reporter = MemoryReporter()

    result = run_sweep(request, reporter, registry, job_id, launcher(registry, settings))

    study = load_study(registry, job_id)
    trials = study.get_trials()
    assert len(trials) == 6 and len(train_jobs(registry)) == 6
    states = {t.number: t.state for t in trials}
    assert states[2] == states[3] == states[5] == TrialState.PRUNED  # the bad ones
    assert states[0] == states[1] == states[4] == TrialState.COMPLETE
    assert (result["trials_pruned"], result["trials_complete"], result["trials_failed"]) == (3, 3, 0)
    for trial in trials:  # each trial is one train job with its settings, seen by Optuna step by step
        job = registry.get_job(trial.user_attrs["job_id"])
        assert job.request["hyper"]["learning_rate"] == trial.params["hyper.learning_rate"]
        assert trial.intermediate_values and job.request["name"].endswith(f"trial {trial.number}")
        assert job.status == ("cancelled" if trial.state == TrialState.PRUNED else "succeeded")
    pruned_job = registry.get_job(trials[2].user_attrs["job_id"])
    assert pruned_job.step < LONG  # stopped early, not just labelled
    good_curves = {tuple(t.intermediate_values.items()) for t in trials if t.params["hyper.learning_rate"] == GOOD}
    assert len(good_curves) == 1  # one seed, one curve
    best = study.best_trial
    assert result["best_value"] == pytest.approx(best.value) and best.params["hyper.learning_rate"] == GOOD
    assert registry.get_adapter(result["best_adapter_id"]).source_job_id == result["best_job_id"]
    # Never silent: a start and an outcome line per trial, and the counts as progress.
    lines = [message for _, message in reporter.logs]
    assert sum("started" in line for line in lines) == 6 and sum("pruned at step" in line for line in lines) == 3
    assert reporter.steps[-1][:2] == (6, 6) and "pruned" in reporter.steps[-1][2]
    assert reporter.series("trials_pruned")[-1][1] == result["trials_pruned"]


def test_a_restarted_sweep_reattaches_its_running_trials(registry, settings, dataset_id, tiny_llama_dir):
    from optuna.trial import TrialState

    # 3 steps: the trials' study states, not their jobs' progress, make them 'running' at the crash
    request = make_sweep(tiny_llama_dir, dataset_id, max_steps=3, n_trials=3, pruner="none")
    job_id = sweep_job(registry, request)
    with pytest.raises(RuntimeError, match="died"):  # dies at its second loop, with trials 0 and 1 running
        run_sweep(request, CrashAfter(1), registry, job_id, launcher(registry, settings))
    running = load_study(registry, job_id).get_trials(states=(TrialState.RUNNING,))
    assert [t.number for t in running] == [0, 1]
    first_jobs = {t.number: t.user_attrs["job_id"] for t in running}

    reporter = MemoryReporter()
    result = run_sweep(request, reporter, registry, job_id, launcher(registry, settings))

    trials = load_study(registry, job_id).get_trials()
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.number: t.user_attrs["job_id"] for t in trials[:2]} == first_jobs  # the same jobs, not new ones
    assert len(train_jobs(registry)) == 3 and result["trials_complete"] == 3
    assert sum("re-attached" in message for _, message in reporter.logs) == 2


def test_the_charts_are_optunas_plotly_figures(registry, settings, dataset_id, tiny_llama_dir):
    import plotly.graph_objects as go

    from studio.sweeps.charts import sweep_figures, trials_table

    first = [{"learning_rate": GOOD}, {"learning_rate": BAD}]
    request = make_sweep(tiny_llama_dir, dataset_id, max_steps=3, n_trials=2, pruner="none", first_trials=first)
    job_id = sweep_job(registry, request)
    run_sweep(request, MemoryReporter(), registry, job_id, launcher(registry, settings))

    figures = sweep_figures(registry, job_id)
    assert set(figures) == {"history", "parallel", "importances"}
    assert all(isinstance(f, go.Figure) and f.data for f in figures.values())
    rows = trials_table(registry, job_id)
    assert [r["hyper.learning_rate"] for r in rows] == [GOOD, BAD] and all(r["adapter"] for r in rows)


def test_the_job_service_refuses_a_bad_space_before_queuing(registry, dataset_id, tiny_llama_dir):
    from studio.errors import ValidationFailed
    from studio.schema import IntRange

    request = make_sweep(tiny_llama_dir, dataset_id, space={"r": IntRange(low=4, high=2048)})
    with pytest.raises(ValidationFailed, match="variant.r = 2048 is not allowed"):
        JobService(registry, NoQueue()).submit(request)
    assert registry.list_jobs() == []
    check_space(make_sweep(tiny_llama_dir, dataset_id))  # the default space is fine
