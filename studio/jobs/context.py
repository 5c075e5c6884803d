"""What a job handler gets besides its request and reporter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from studio.device import DeviceInfo
from studio.settings import Settings


@dataclass
class JobContext:
    """Where and as what a job runs.

    ``previous_checkpoint`` is the last checkpoint this job wrote in an earlier
    attempt (a worker died and the job was re-queued): handlers resume from it.
    """

    job_id: int
    settings: Settings
    registry: object  # models_db.registry.Registry; typed loosely to keep this module import-light
    device: DeviceInfo
    attempt: int
    previous_checkpoint: str | None = None

    @property
    def work_dir(self) -> Path:
        """A per-job directory for checkpoints and outputs."""
        path = self.settings.jobs_dir / str(self.job_id)
        path.mkdir(parents=True, exist_ok=True)
        return path
