"""Submitting, cancelling, retrying and watching jobs: what the UI and the CLI call."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from models_db.registry import FINAL_STATUSES, MetricPoint, Registry
from models_db.tables import JobLogRow, JobRow, MetricRow
from studio.errors import StudioError
from studio.jobs.outbox import send_job, waiting_notice
from studio.schema import (
    SCHEMA_VERSION,
    AnyRequest,
    EvalRequest,
    FederatedRequest,
    GenerateRequest,
    GeneratorRequest,
    JobFilters,
    MergeRequest,
    MixtureRequest,
    PersonaliseRequest,
    SweepRequest,
    TrainRequest,
    TransferRequest,
    parse_request,
)
from studio.services.job_names import MAX_NAME, default_job_name

logger = logging.getLogger(__name__)


class Dispatcher(Protocol):
    """Puts a job id on the queue (Celery in production; anything in tests)."""

    def send(self, job_id: int) -> str: ...

    def revoke(self, task_id: str | None) -> None: ...


Request = AnyRequest


def _refuse_generators(adapters: list) -> None:
    """An ICM-LoRA generator is registered among the adapters but is none: it cannot be evaluated."""
    for row in adapters:
        if row.variant == "icm_generator":  # studio.adapter_generation.jobs.GENERATOR_VARIANT (torch-free here)
            raise StudioError(
                f"#{row.id} is an ICM-LoRA generator, not an adapter: evaluate an adapter it generated instead"
            )


class JobService:
    """The one path every job takes: validate, record in the registry, queue."""

    def __init__(self, registry: Registry, dispatcher: Dispatcher):
        self.registry = registry
        self.dispatcher = dispatcher

    def submit(self, request: Request | dict, name: str | None = None, submission_token: str | None = None) -> JobRow:
        """Validate ``request``, store it as a queued job and put it on the queue.

        Without a ``name`` the job is named after what it works on (``default_job_name``).

        Never fails because the broker is down: the job then stays queued and
        unsent (``studio.jobs.outbox.queue_notice`` says so) until it can be sent.
        ``submission_token`` makes a repeated submit of one form (a double click)
        return the job the first one queued, without queuing another.
        """
        earlier = self.registry.job_with_token(submission_token)
        if earlier is not None:
            return earlier
        if isinstance(request, dict):
            request = parse_request(request)
        self._check_references(request)
        job = self.registry.create_job(
            kind=request.kind,
            name=(name or default_job_name(request, self.registry))[:MAX_NAME],
            request=request.model_dump(mode="json"),
            schema_version=SCHEMA_VERSION,
            seed=request.seed,
            dataset_id=getattr(request, "dataset_id", None),
            base_model=self._base_model_of(request),
            variant=getattr(request, "variant", None),
            submission_token=submission_token,
        )
        # The job is safe in the registry now: a broker that is down only delays it (the
        # outbox loop of the web process and of every worker sends it when the broker is back).
        # A submit that raced one with the same token got that job: sending it again is harmless,
        # since send_job only sends a job whose sends still equal seen_sends.
        outcome = send_job(self.registry, self.dispatcher, job.id, seen_sends=0)
        if outcome.error is not None:
            notice = waiting_notice(outcome.error)
            self.registry.add_job_log(job.id, notice, "warning")
            logger.warning("job %s %s", job.id, notice)
        return self.registry.get_job(job.id)

    def _base_model_of(self, request: Request) -> str | None:
        """The base model a job works on (a merge's is its adapters'), for the Jobs list and filters."""
        if isinstance(request, MergeRequest | MixtureRequest | GeneratorRequest):
            return self.registry.get_adapter(request.adapter_ids[0]).base_model
        if isinstance(request, GenerateRequest):
            return self.registry.get_adapter(request.generator_id).base_model
        if isinstance(request, TransferRequest):
            return request.target_base  # the base the new adapter is for
        return getattr(request, "base_model", None)

    def _check_references(self, request: Request) -> None:
        """Refuse a job now, with a message, rather than let it fail on a worker later."""
        if isinstance(request, TrainRequest):
            from studio.variants.registry import create_variant

            create_variant(request.variant, request.variant_params)  # raises ValidationFailed naming the field
            self.registry.get_dataset(request.dataset_id)
        if isinstance(request, SweepRequest):
            from studio.sweeps.space import check_space

            check_space(request)  # every searched setting against the schemas, before any trial runs
            self.registry.get_dataset(request.dataset_id)
        if isinstance(request, EvalRequest):
            self.registry.get_dataset(request.dataset_id)
            from studio.evaluation.comparison import common_base

            adapters = [self.registry.get_adapter(i) for i in request.adapters()]
            _refuse_generators(adapters)
            if not adapters and not request.base_model:
                raise StudioError("an evaluation needs an adapter or a base model")
            common_base(request.base_model, adapters)  # one base for every model compared
        if isinstance(request, PersonaliseRequest):
            self._check_personalise(request)
        if isinstance(request, GeneratorRequest | GenerateRequest):
            from studio.adapter_generation.jobs import check_generator_row, check_generator_sources

            if isinstance(request, GeneratorRequest):
                check_generator_sources(self.registry, request)
            else:
                check_generator_row(self.registry, request.generator_id)
                self.registry.get_dataset(request.dataset_id)
        if isinstance(request, TransferRequest):
            from studio.transfer.job import refuse_own_base, require_kit

            source = self.registry.get_adapter(request.adapter_id)
            require_kit(source)  # no kit: say how to get one, now
            refuse_own_base(source, request.target_base)
        if isinstance(request, FederatedRequest):
            self._check_federated(request)
        if isinstance(request, MergeRequest):
            from studio.merging.checks import check_mergeable, check_not_a_copy

            parents = [self.registry.get_adapter(adapter_id) for adapter_id in request.adapter_ids]
            check_mergeable(parents, request.method)
            check_not_a_copy(request, parents)  # here, so the tab, the CLI and the API all refuse it
        if isinstance(request, MixtureRequest):
            from studio.composition.mixture_checks import check_mixable

            check_mixable([self.registry.get_adapter(adapter_id) for adapter_id in request.adapter_ids])
            for dataset_id in request.dataset_ids:
                self.registry.get_dataset(dataset_id)

    def _check_personalise(self, request: PersonaliseRequest) -> None:
        """The dataset exists, the user column is one of its columns, the features file is there."""
        from pathlib import Path

        from pydantic import ValidationError

        from studio.composition.reclora_data import dataset_columns
        from studio.errors import ValidationFailed
        from studio.schema import DATASET_COLUMNS, format_validation_error

        columns = dataset_columns(self.registry.get_dataset(request.dataset_id))
        try:
            PersonaliseRequest.model_validate(request.model_dump(), context={DATASET_COLUMNS: columns})
        except ValidationError as exc:
            raise ValidationFailed(format_validation_error(exc)) from None
        if request.user_features_path and not Path(request.user_features_path).is_file():
            raise ValidationFailed(f"user_features_path: {request.user_features_path} is not a file")

    def _check_federated(self, request: FederatedRequest) -> None:
        """The split's column exists, every client gets rows and the privacy plan fits its budget (as the job plans)."""
        from studio.federated.planning import load_rows, plan_privacy, preview_split

        split = preview_split(load_rows(self.registry.get_dataset(request.dataset_id), request), request)
        if request.privacy is not None and request.privacy.target_epsilon is not None:
            plan_privacy(request, [len(part) for part in split.parts])  # only a budget can refuse (σ alone: no check)

    def cancel(self, job_id: int) -> str:
        """Ask a job to stop. Queued jobs stop at once; running ones at their next step."""
        job = self.registry.get_job(job_id)
        status = self.registry.request_cancel(job_id)
        if job.status in ("queued", "running"):
            self.registry.add_job_log(job_id, "cancellation requested", "warning")
            self.dispatcher.revoke(job.celery_task_id)
        return status

    def retry(self, job_id: int, submission_token: str | None = None) -> JobRow:
        """Submit a finished job again; a training job resumes from its last checkpoint.

        A repeated retry with the same ``submission_token`` (a double click) returns the first one's job.
        """
        job = self.registry.get_job(job_id)
        if job.status not in FINAL_STATUSES:
            raise StudioError(f"job {job_id} is still {job.status}; cancel it first or wait for it to finish")
        request = dict(job.request)
        if job.kind == "train" and job.checkpoint_path:
            request["resume_from_job"] = job_id
        return self.submit(request, name=job.name, submission_token=submission_token)

    def get(self, job_id: int) -> JobRow:
        return self.registry.get_job(job_id)

    def list(self, status: list[str] | None = None, kind: str | None = None, limit: int = 200) -> list[JobRow]:
        return self.registry.list_jobs(status=status, kind=kind, limit=limit)

    def page(
        self,
        filters: JobFilters | None = None,
        search: str | None = None,
        sort: str = "newest",
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[JobRow], int]:
        """One page of jobs (filtered and searched by the database) and how many match."""
        return self.registry.page_jobs(filters, search, sort, offset, limit)

    def curves(self, job_id: int, names: list[str] | None = None, max_points: int = 500) -> list[MetricPoint]:
        """A job's metrics for charts: at most ``max_points`` per metric, keeping the ends, dips and spikes."""
        return self.registry.metric_curves(job_id, names, max_points)

    def logs(self, job_id: int, limit: int = 500) -> list[JobLogRow]:
        return self.registry.job_logs(job_id, limit)

    def metrics(self, job_id: int, names: list[str] | None = None) -> list[MetricRow]:
        return self.registry.metrics(job_id, names)

    def wait(
        self,
        job_id: int,
        timeout: float | None = None,
        poll_seconds: float = 0.5,
        on_update: Callable[[JobRow], None] | None = None,
    ) -> JobRow:
        """Block until the job reaches a final status (or ``timeout`` seconds pass)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.registry.get_job(job_id)
            if on_update:
                on_update(job)
            if job.status in FINAL_STATUSES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise StudioError(f"job {job_id} is still {job.status} after {timeout:.0f} s")
            time.sleep(poll_seconds)
