"""The studio's services on an embedded registry, every job run in this process: what the real-data scripts drive.

Each job goes through ``JobService.submit`` (the request's checks) and the studio's job runner
(``run_job_inline``, what ``studio ... --inline`` does), so a script measures the studio's own path.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import embedded_settings


class Studio:
    """The studio's services on an embedded registry in ``work``; each job runs here through ``run_job_inline``."""

    def __init__(self, work: Path):
        from studio.models.base_models import register_bundled_models
        from studio.services.container import build_services

        self.svc = build_services(embedded_settings(Path(work) / "studio"))
        register_bundled_models(self.svc.registry)

    def base_path(self, name: str) -> Path:
        """The local directory of a base model (bundled name, local folder or cached id)."""
        from studio.models.base_models import resolve_base_model

        return resolve_base_model(name, self.svc.settings).path

    def dataset(self, path: Path) -> int:
        """Register a data file with ``DatasetService``; its id."""
        return self.svc.datasets.add(path).id

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Submit ``request``, run it here; its result plus ``job_id`` and ``seconds`` (wall time)."""
        from studio.jobs.inline import run_job_inline

        job = self.svc.jobs.submit(request)
        started = time.perf_counter()
        done = run_job_inline(
            job.id, self.svc.registry, self.svc.settings, lambda i: self.svc.jobs.wait(i, poll_seconds=2.0)
        )
        seconds = time.perf_counter() - started
        if done.status != "succeeded":
            raise SystemExit(f"job {job.id} ({request['kind']}) ended {done.status}: {done.error}")
        print(f"job {job.id} {request['kind']} done in {seconds:.0f} s", flush=True)
        return {**(done.result or {}), "job_id": job.id, "seconds": seconds}
