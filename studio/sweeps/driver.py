"""The sweep driver: an Optuna study in the registry's database whose trials are ordinary ``train`` jobs.

The loop keeps up to ``parallel`` trials running: ``study.ask()`` draws a trial's settings,
a ``train`` job is submitted for it (its job id becomes the trial's ``job_id`` user attribute),
and running trials are polled: their validation metric is reported to Optuna step by step,
an unpromising one is pruned (its job cancelled), a finished one told its value, a failed one
told FAIL. The study is named ``sweep-<sweep job id>`` and loaded if it exists, so a sweep job
re-run after a crash or restart re-attaches its running trials by their job ids instead of
starting new ones; the trial's submission token makes a submit repeated after a crash return
the job queued the first time.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from models_db.registry import FINAL_STATUSES, Registry
from studio.errors import JobCancelled
from studio.progress import Reporter
from studio.schema import SWEEP_OBJECTIVES, SweepRequest, TrainRequest
from studio.sweeps.space import SearchedSetting, check_space, first_trial_point, suggest, trial_request

logger = logging.getLogger(__name__)

JOB_ID_ATTR = "job_id"
ADAPTER_ID_ATTR = "adapter_id"
STARTED_AT_ATTR = "started_at"
# A trial no worker has taken after this long gets one warning in the sweep's log.
UNCLAIMED_WARNING_SECONDS = 60.0


class TrialLauncher(Protocol):
    """Starts and stops the train jobs of trials."""

    def submit(self, request: TrainRequest, token: str) -> int: ...

    def cancel(self, job_id: int) -> None: ...

    def close(self) -> None: ...


class QueueLauncher:
    """Trials go on the job queue like any training job; any worker may run them."""

    def __init__(self, jobs: Any):  # studio.services.jobs.JobService
        self.jobs = jobs

    def submit(self, request: TrainRequest, token: str) -> int:
        return self.jobs.submit(request, submission_token=token).id

    def cancel(self, job_id: int) -> None:
        self.jobs.cancel(job_id)

    def close(self) -> None:
        pass


class LocalLauncher(QueueLauncher):
    """Trials are queued as usual, then run on threads of this process (``studio sweep --inline``, tests).

    The atomic claim of ``execute_job`` makes this safe beside workers: a trial a worker took
    first is left to it. A heartbeat thread keeps this process's trials from looking orphaned.
    """

    def __init__(self, jobs: Any, settings: Any, identity: Any):  # JobService, Settings, WorkerIdentity
        super().__init__(jobs)
        self.settings = settings
        self.identity = identity
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._heart = threading.Thread(target=self._beat, name="sweep-heartbeat", daemon=True)
        self._heart.start()

    def submit(self, request: TrainRequest, token: str) -> int:
        from studio.jobs.runner import execute_job

        job_id = super().submit(request, token)
        args = (job_id, self.jobs.registry, self.settings, self.identity)
        thread = threading.Thread(target=execute_job, args=args, name=f"sweep-trial-job-{job_id}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return job_id

    def _beat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                self.jobs.registry.touch_jobs_of_worker(self.identity.name)
            except Exception as exc:  # a database hiccup must not stop the trials
                logger.warning("sweep heartbeat failed: %s", exc)

    def close(self) -> None:
        for thread in self._threads:
            thread.join()
        self._stop.set()


def study_name(sweep_job_id: int) -> str:
    """The Optuna study of sweep job ``sweep_job_id``."""
    return f"sweep-{sweep_job_id}"


def make_pruner(request: SweepRequest) -> Any:
    """The request's pruner: median (from its startup trials and warm-up steps), Hyperband, or none."""
    import optuna

    if request.pruner == "median":
        from studio.sweeps.pruning import LatestStepMedianPruner

        return LatestStepMedianPruner(request.pruner_startup_trials, request.pruner_warmup_steps)
    if request.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=request.hyper.max_steps or "auto")
    return optuna.pruners.NopPruner()


def open_study(request: SweepRequest, registry: Registry, sweep_job_id: int) -> Any:
    """Create the sweep's study in the registry's database, or load it when the sweep is re-run.

    On creation the points of ``first_trials`` are queued and the start time recorded (the hours
    budget counts from it, across restarts).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep's own log says what happens
    study = optuna.create_study(
        storage=registry.optuna_storage(),
        study_name=study_name(sweep_job_id),
        direction=SWEEP_OBJECTIVES[request.objective],
        sampler=optuna.samplers.TPESampler(seed=request.seed),
        pruner=make_pruner(request),
        load_if_exists=True,
    )
    if STARTED_AT_ATTR not in study.user_attrs:
        settings = check_space(request)
        # Each listed point is one trial, a point listed twice too (it measures the noise). Trials are only
        # asked for after this, so the study's first trials are the points enqueued before a crash here.
        done = len(study.get_trials(deepcopy=False))
        for point in request.first_trials[done:]:
            study.enqueue_trial(first_trial_point(point, settings), skip_if_exists=False)
        study.set_user_attr("sweep_job_id", sweep_job_id)
        study.set_user_attr("variant", request.variant)
        study.set_user_attr("mode", request.mode)
        study.set_user_attr(STARTED_AT_ATTR, time.time())
    return study


@dataclass
class RunningTrial:
    """A trial whose train job is queued or running; ``last_step`` is the last step reported to Optuna."""

    trial: Any  # optuna.trial.Trial
    job_id: int
    last_step: int = -1
    submitted: float = field(default_factory=time.monotonic)
    warned: bool = False

    @property
    def number(self) -> int:
        return self.trial.number


@dataclass
class SweepState:
    """Counts of finished trials and the best value, for progress and the result."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    best: float | None = None

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    def describe(self, n_trials: int, running: int) -> str:
        best = "none yet" if self.best is None else f"{self.best:.4g}"
        return (
            f"{self.finished}/{n_trials} trials: {self.complete} done, {self.pruned} pruned, "
            f"{self.failed} failed, {running} running; best {best}"
        )


def _count(study: Any) -> SweepState:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    state = SweepState(
        complete=sum(t.state == TrialState.COMPLETE for t in trials),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        failed=sum(t.state == TrialState.FAIL for t in trials),
    )
    if state.complete:
        state.best = study.best_value
    return state


def _started(study: Any) -> int:
    """Trials started so far (every state but enqueued-and-waiting)."""
    from optuna.trial import TrialState

    return sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))


def _describe_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _token(sweep_job_id: int, number: int) -> str:
    return f"sweep-{sweep_job_id}-trial-{number}"


def _start_trial(
    study: Any, trial: Any, request: SweepRequest, settings: list[SearchedSetting], sweep_job_id: int, launcher
) -> RunningTrial:
    """Draw (or re-read) the trial's settings and submit its train job; the job id is kept on the trial."""
    params = {s.key: suggest(trial, s) for s in settings}
    train = trial_request(request, params, trial.number)
    job_id = launcher.submit(train, _token(sweep_job_id, trial.number))
    trial.set_user_attr(JOB_ID_ATTR, job_id)
    return RunningTrial(trial, job_id)


def _reattach(study: Any, request: SweepRequest, settings, sweep_job_id: int, launcher, reporter) -> dict:
    """The running trials of a study loaded after a restart, by their job ids (submitting any never submitted)."""
    import optuna
    from optuna.trial import TrialState

    running: dict[int, RunningTrial] = {}
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial = optuna.trial.Trial(study, frozen._trial_id)
        job_id = frozen.user_attrs.get(JOB_ID_ATTR)
        if job_id is None:  # the sweep stopped between ask and submit: the token makes this submit idempotent
            run = _start_trial(study, trial, request, settings, sweep_job_id, launcher)
        else:
            run = RunningTrial(trial, int(job_id))
        run.last_step = max(frozen.intermediate_values, default=-1)
        running[frozen.number] = run
        reporter.log(f"trial {frozen.number}: re-attached to its job {run.job_id}")
    return running


def _objective_value(job: Any, objective: str, reported: dict[int, float]) -> float | None:
    value = (job.result or {}).get(objective)
    if value is None and reported:
        value = reported[max(reported)]
    return None if value is None else float(value)


def _poll(study: Any, run: RunningTrial, request: SweepRequest, registry: Registry, launcher, reporter) -> bool:
    """Report a trial's new validation points; prune, complete or fail it. True once it is finished."""
    from optuna.trial import TrialState

    objective = request.objective
    job = registry.get_job(run.job_id)
    new_points = [m for m in registry.metrics(run.job_id, [objective]) if m.step > run.last_step]
    for point in new_points:
        if point.step > run.last_step:  # a resumed job reports steps after its checkpoint again
            run.trial.report(point.value, point.step)
            run.last_step = point.step
    label = f"trial {run.number} (job {run.job_id})"
    if job.status == "succeeded":
        reported = study._storage.get_trial(run.trial._trial_id).intermediate_values
        value = _objective_value(job, objective, reported)
        if value is None:
            study.tell(run.trial, state=TrialState.FAIL)
            reporter.log(f"{label} finished without a {objective}; counted as failed", "warning")
            return True
        adapter_id = (job.result or {}).get("adapter_id")
        if adapter_id is not None:
            run.trial.set_user_attr(ADAPTER_ID_ATTR, adapter_id)
        study.tell(run.trial, value)
        best = " (best so far)" if study.best_trial.number == run.number else ""
        reporter.log(f"{label} finished: {objective} {value:.4g}{best}")
        return True
    if job.status in FINAL_STATUSES:  # failed, or cancelled by someone else
        study.tell(run.trial, state=TrialState.FAIL)
        reporter.log(f"{label} {job.status}" + (f": {job.error}" if job.error else ""), "warning")
        return True
    if new_points and run.trial.should_prune():
        launcher.cancel(run.job_id)
        study.tell(run.trial, state=TrialState.PRUNED)
        reporter.log(f"{label} pruned at step {run.last_step}: {objective} {new_points[-1].value:.4g}")
        return True
    if job.status == "queued" and not run.warned and time.monotonic() - run.submitted > UNCLAIMED_WARNING_SECONDS:
        run.warned = True
        reporter.log(
            f"{label} is still queued: no free worker took it (a sweep holds a worker itself; start another "
            "worker, or run the sweep with --inline)",
            "warning",
        )
    return False


def run_sweep(request: SweepRequest, reporter: Reporter, registry: Registry, sweep_job_id: int, launcher) -> dict:
    """Run (or continue) sweep job ``sweep_job_id`` to its budget; returns the best trial and the counts."""
    settings = check_space(request)
    study = open_study(request, registry, sweep_job_id)
    deadline = None
    if request.max_hours is not None:
        deadline = study.user_attrs[STARTED_AT_ATTR] + request.max_hours * 3600
    running = _reattach(study, request, settings, sweep_job_id, launcher, reporter)
    shown = ""
    try:
        while True:
            reporter.check_cancelled()
            for number, run in list(running.items()):
                if _poll(study, run, request, registry, launcher, reporter):
                    del running[number]
            budget_left = deadline is None or time.time() < deadline
            while budget_left and len(running) < request.parallel and _started(study) < request.n_trials:
                run = _start_trial(study, study.ask(), request, settings, sweep_job_id, launcher)
                running[run.number] = run
                reporter.log(f"trial {run.number} (job {run.job_id}) started: {_describe_params(run.trial.params)}")
            state = _count(study)
            text = state.describe(request.n_trials, len(running))
            if text != shown:
                shown = text
                reporter.progress(state.finished, request.n_trials, text)
                values = {"trials_complete": state.complete, "trials_pruned": state.pruned}
                values["trials_failed"] = state.failed
                if state.best is not None:
                    values["best_value"] = state.best
                reporter.metrics(state.finished, values)
            if not running:
                if not budget_left and _started(study) < request.n_trials:
                    reporter.log(f"the {request.max_hours:g} h budget is spent; no more trials start", "warning")
                break
            time.sleep(request.poll_seconds)
    except JobCancelled:
        _stop_trials(study, running, launcher, reporter)
        raise
    finally:
        launcher.close()
    return sweep_summary(study)


def _stop_trials(study: Any, running: dict[int, RunningTrial], launcher, reporter) -> None:
    """The sweep was cancelled: cancel its running trials' jobs and record them as failed."""
    from optuna.trial import TrialState

    for run in running.values():
        launcher.cancel(run.job_id)
        study.tell(run.trial, state=TrialState.FAIL)
    if running:
        reporter.log(f"cancelled the running trials' jobs {', '.join(str(r.job_id) for r in running.values())}")


def sweep_summary(study: Any) -> dict:
    """The sweep job's result: the study, the counts, and the best trial with its job and adapter."""
    state = _count(study)
    summary: dict[str, Any] = {
        "study_name": study.study_name,
        "trials_complete": state.complete,
        "trials_pruned": state.pruned,
        "trials_failed": state.failed,
        "best_value": state.best,
    }
    if state.complete:
        best = study.best_trial
        summary.update(
            best_trial=best.number,
            best_params=best.params,
            best_job_id=best.user_attrs.get(JOB_ID_ATTR),
            best_adapter_id=best.user_attrs.get(ADAPTER_ID_ATTR),
        )
    return summary


def load_study(registry: Registry, sweep_job_id: int) -> Any:
    """The study of sweep job ``sweep_job_id``, read-only use (charts, the Sweep tab)."""
    import optuna

    return optuna.load_study(study_name=study_name(sweep_job_id), storage=registry.optuna_storage())
