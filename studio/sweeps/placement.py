"""Where a sweep's trials run: queued as train jobs for other workers, or inside the sweep's own job.

The sweep job holds one worker for as long as it runs, so queued trials need ``parallel`` more
workers on the queue. With fewer (``studio run``'s single embedded worker, or one `studio worker`)
a queued trial would wait forever and the sweep with it; run inside the sweep's process, they start.
The UI and the CLI both decide with :func:`trials_placement` when the sweep is submitted.
"""

from __future__ import annotations

from typing import Any, Literal


def trials_placement(registry: Any, settings: Any, parallel: int) -> Literal["workers", "here"]:
    """``"workers"`` when more than ``parallel`` workers serve this studio's queue, else ``"here"``."""
    from studio.services.system import workers_serving_queue

    return "workers" if workers_serving_queue(registry, settings) > parallel else "here"


def placement_sentence(trials_on: str) -> str:
    """Where the trials run, said for the user (the confirmation of the UI and the CLI)."""
    if trials_on == "here":
        return "inside the sweep's own worker (not enough other workers are online to take them)"
    return "as train jobs on the other workers (the sweep holds one worker itself)"
