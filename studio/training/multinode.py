"""One training job over several hosts: node 0 and `studio worker --join-distributed` meet at a c10d rendezvous.

How the hosts meet
    The worker that takes a job with ``hyper.nodes = N > 1`` is node 0. It opens a c10d
    ``TCPStore`` (the key-value store torchrun's ``--rdzv-backend c10d`` is built on) on
    ``STUDIO_RDZV_HOST:STUDIO_RDZV_PORT``, writes the job into it (request, dataset bytes, the
    checkpoint to resume from) and waits for N − 1 more nodes. On every other host a long-lived
    ``studio worker --join-distributed HOST:PORT`` polls that endpoint; when a job appears it takes
    the next node number (an atomic ``add`` on the store), writes the dataset locally, resolves the
    base model with its own settings, and starts its ``processes`` ranks exactly as node 0 starts
    its own (:func:`studio.training.distributed.run_local_ranks`). All ranks then build the gloo or
    NCCL group on the same store (under a per-job prefix) and train as in a one-host job; rank 0
    (on node 0) alone reports, validates, checkpoints and saves.

Why a dedicated joiner and not torchrun or a second Celery queue
    The one-host engine deliberately keeps every rank a child of the job's process (cancel, dead
    ranks and rank 0's messages need no agent); a joiner is the same parent on another host, so it
    reuses all of that. ``torchrun`` would put its own elastic agent, restarts and log handling
    between the worker and the ranks. A Celery fan-out (N − 1 "join" tasks) would need the queue to
    hand those tasks to *other* hosts while they may be busy with ordinary jobs, and a join task
    stuck behind a long job looks the same to node 0 as a missing host; a joiner process is either
    listening or not, needs no database or broker, and is tested here without either.

Failures
    * A node that never arrives: node 0 fails the job after ``STUDIO_RDZV_TIMEOUT`` with how many
      nodes are missing and the command to start one.
    * A node's rank fails: its joiner writes ``failed/<node>`` into the store; node 0 reads it
      within a poll interval, stops its ranks and fails the job (gloo usually fails them sooner).
    * A joiner's host disappears: its heartbeat (``beat/<node>``) stops; node 0 fails the job after
      ``HEARTBEAT_SECONDS``.
    * Node 0 ends (done, failed, cancelled, killed): it writes ``end`` before closing the store; a
      joiner that reads a failure there, or finds the store gone, kills its ranks.
    * Cancel: node 0's ranks put the cancel into the all-reduce every step, so every rank on every
      node stops after the same step, and rank 0 checkpoints.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from studio.errors import JobCancelled, StudioError
from studio.jobs.context import JobContext
from studio.progress import Reporter

POLL_SECONDS = 0.2
HEARTBEAT_SECONDS = 30.0  # a joiner that has not beaten for this long is gone (its host died or lost the network)
CONNECT_SECONDS = 2.0  # a joiner's attempt to reach the endpoint; nothing listening means no job right now
END_LINGER_SECONDS = 1.0  # node 0 keeps the store this long after writing ``end``, so joiners can read it

KEY_TOKEN = "studio/token"  # this job's name; written last, so a joiner that sees it finds the payload
KEY_PAYLOAD = "studio/payload"
KEY_JOINED = "studio/joined"  # add(…, 1) gives a joiner its node number
KEY_GO = "studio/go"  # every node arrived
KEY_END = "studio/end"  # "done", "cancelled" or why the job failed


def join_command(host: str, port: int) -> str:
    """The command that starts a node on another host."""
    return f"studio worker --join-distributed {host}:{port}"


def parse_endpoint(text: str, default_port: int) -> tuple[str, int]:
    """``HOST[:PORT]`` as (host, port)."""
    host, _, port = text.strip().rpartition(":") if ":" in text else (text.strip(), "", "")
    if not host:
        raise StudioError(f"rendezvous endpoint {text!r}: give HOST:PORT (e.g. head-host:29400)")
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise StudioError(f"rendezvous endpoint {text!r}: the port is not a number") from None


def rendezvous_address(settings: Any, nodes: int) -> tuple[str, int]:
    """Where node 0 opens the rendezvous; refuses when this worker has none configured."""
    host = (getattr(settings, "rdzv_host", "") or "").strip()
    if not host:
        raise StudioError(
            f"this job runs over {nodes} hosts, but this worker has no STUDIO_RDZV_HOST: set it (and "
            "STUDIO_RDZV_PORT) on the worker that takes such jobs to the address the other hosts reach it at"
        )
    return host, int(settings.rdzv_port)


def group_store(rdzv: tuple[str, int], token: str, timeout: timedelta) -> Any:
    """The store a rank builds its process group on: the rendezvous, under this job's prefix."""
    import torch.distributed as dist

    store = dist.TCPStore(rdzv[0], rdzv[1], is_master=False, timeout=timeout, wait_for_workers=False)
    return dist.PrefixStore(f"{token}/group/", store)


# ---------------------------------------------------------------- node 0


def pack_payload(job: Any) -> bytes:
    """What another node needs to run its ranks, as JSON (never pickle: it crosses the network)."""
    data = job.data
    resume_files: dict[str, str] = {}
    if job.resume:
        root = Path(job.resume)
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            resume_files[str(file.relative_to(root))] = base64.b64encode(file.read_bytes()).decode()
    payload = {
        "job_id": job.ctx.job_id,
        "request": job.request.model_dump(mode="json"),
        "dataset": {
            "name": data.name,
            "sha256": data.sha256,
            "report": data.report,
            "suffix": Path(data.path).suffix or ".jsonl",
            "content": base64.b64encode(Path(data.path).read_bytes()).decode(),
        },
        "dataset_rows": job.dataset_rows,
        "resume_name": Path(job.resume).name if job.resume else None,
        "resume_files": resume_files,
        "nodes": job.nodes,
        "timeout_s": job.timeout_s,
    }
    return json.dumps(payload).encode()


class NodeZero:
    """Node 0's side of the rendezvous: the store's server, the wait for the others, their health."""

    def __init__(self, host: str, port: int, nodes: int, payload: bytes) -> None:
        import torch.distributed as dist

        self.host, self.port, self.nodes = host, port, nodes
        self.token = f"t{uuid.uuid4().hex[:12]}"
        try:
            self.store = dist.TCPStore(
                host, port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=30)
            )
        except Exception as exc:  # noqa: BLE001 - the port is taken, or the host is not this machine's
            raise StudioError(
                f"cannot open the rendezvous on {host}:{port} ({type(exc).__name__}: {exc}); is another job over "
                "several hosts running on this host, or is STUDIO_RDZV_HOST not an address of this host?"
            ) from None
        self.store.set(KEY_PAYLOAD, payload)
        self.store.set(KEY_TOKEN, self.token)
        self.beats: dict[int, tuple[int, float]] = {}

    def wait_for_nodes(self, timeout_s: float, reporter: Reporter) -> None:
        """Return once every node joined; raise StudioError after ``timeout_s``, JobCancelled on a cancel."""
        needed, started, announced = self.nodes - 1, time.monotonic(), -1
        while True:
            joined = min(int(self.store.add(KEY_JOINED, 0)), needed)
            if joined >= needed:
                break
            if joined != announced:
                reporter.log(
                    f"waiting for {needed - joined} more node(s) at the rendezvous {self.host}:{self.port} "
                    f"(start `{join_command(self.host, self.port)}` on another host)"
                )
                announced = joined
            if reporter.is_cancelled():
                raise JobCancelled()
            waited = time.monotonic() - started
            if waited > timeout_s:
                missing = needed - joined
                raise StudioError(
                    f"waited {timeout_s:.0f} s for {missing} more node{'s' if missing > 1 else ''}; start "
                    f"`{join_command(self.host, self.port)}` on another host (STUDIO_RDZV_TIMEOUT sets the wait)"
                )
            time.sleep(POLL_SECONDS)
        now = time.monotonic()
        self.beats = {node: (0, now) for node in range(1, self.nodes)}
        self.store.set(KEY_GO, "1")
        reporter.log(f"all {self.nodes} nodes joined the rendezvous {self.host}:{self.port}")

    def failure(self) -> str | None:
        """Why another node failed (its own report, or its heartbeat stopped), or None."""
        now = time.monotonic()
        for node in range(1, self.nodes):
            key = f"failed/{node}"
            if self.store.check([key]):
                return f"node {node}: {self.store.get(key).decode()}"
            beat = int(self.store.add(f"beat/{node}", 0))
            last, seen = self.beats[node]
            if beat != last:
                self.beats[node] = (beat, now)
            elif now - seen > HEARTBEAT_SECONDS:
                return (
                    f"node {node} stopped answering for {HEARTBEAT_SECONDS:.0f} s (its host or its "
                    "`studio worker --join-distributed` went away)"
                )
        return None

    def close(self, end: str) -> None:
        """Tell the joiners how the job ended, give them a moment to read it, and stop the store."""
        try:
            self.store.set(KEY_END, end)
            time.sleep(END_LINGER_SECONDS)
        finally:
            del self.store


def train_as_node_zero(job: Any, reporter: Reporter) -> dict[str, Any]:
    """Run ``job`` as node 0 of ``job.nodes``: open the rendezvous, wait for the others, train; rank 0's summary."""
    from studio.training.distributed import run_local_ranks

    settings = job.ctx.settings
    host, port = rendezvous_address(settings, job.nodes)
    rendezvous = NodeZero(host, port, job.nodes, pack_payload(job))
    end = "failed"
    try:
        rendezvous.wait_for_nodes(float(getattr(settings, "rdzv_timeout_seconds", 300.0)), reporter)
        job = replace(job, node=0, rdzv=(host, port), token=rendezvous.token)
        result = run_local_ranks(job, reporter, remote=rendezvous.failure)
        end = "done"
        return result
    except JobCancelled:
        end = "cancelled"
        raise
    except BaseException as exc:
        end = f"node 0 failed: {exc}"
        raise
    finally:
        rendezvous.close(end)


# ---------------------------------------------------------------- the other nodes


@dataclass
class JoinedContext(JobContext):
    """A joined node's job context: its own settings and device, and a scratch directory of its own."""

    join_dir: Path | None = None

    @property
    def work_dir(self) -> Path:
        """Where this node's ranks may write (never node 0's job directory, even on a shared disk)."""
        assert self.join_dir is not None
        self.join_dir.mkdir(parents=True, exist_ok=True)
        return self.join_dir


class JoinedReporter(Reporter):
    """What the joined node's ranks report (warnings and errors only) goes to the joiner's log."""

    def __init__(self, log: Callable[[str], None], job_id: int) -> None:
        super().__init__()
        self._log, self.job_id = log, job_id

    def log(self, message: str, level: str = "info") -> None:
        self._log(f"job {self.job_id}: {message}" if level == "info" else f"job {self.job_id} [{level}]: {message}")

    def progress(self, step: int, total: int | None = None, message: str | None = None) -> None:
        pass  # rank 0 reports progress

    def metrics(self, step: int, values: dict[str, float]) -> None:
        pass

    def ranks(self, step: int, ranks: dict[str, int], extra: dict[str, dict[str, Any]] | None = None) -> None:
        pass

    def checkpoint(self, path: str, step: int) -> None:
        pass

    def is_cancelled(self) -> bool:
        return False  # a cancel comes from node 0, through the ranks' all-reduce


class NodeZeroWatch:
    """The joiner's view of node 0, polled by the local ranks' watcher: beats, and stops on node 0's end."""

    def __init__(self, store: Any, node: int) -> None:
        self.store, self.node = store, node
        self.end: str | None = None

    def __call__(self) -> str | None:
        if self.end in ("done", "cancelled"):
            return None  # the ranks finish (or stop) on their own; node 0 may already have closed the store
        try:
            self.store.add(f"beat/{self.node}", 1)
            if self.store.check([KEY_END]):
                self.end = self.store.get(KEY_END).decode()
        except Exception:  # noqa: BLE001 - the store is gone: node 0 died without a word
            return "node 0 went away (its rendezvous closed)"
        if self.end is None or self.end in ("done", "cancelled"):
            return None
        return self.end


def connect(host: str, port: int) -> Any:
    """A client of the rendezvous at host:port, or None when nothing listens there now."""
    import torch.distributed as dist

    try:
        return dist.TCPStore(
            host, port, is_master=False, wait_for_workers=False, timeout=timedelta(seconds=CONNECT_SECONDS)
        )
    except Exception:  # noqa: BLE001 - no job over several hosts is waiting right now
        return None


def join_once(settings: Any, host: str, port: int, seen: set[str], log: Callable[[str], None]) -> str | None:
    """Join the job waiting at host:port, if any and not joined before; returns how it ended, None if none."""
    store = connect(host, port)
    if store is None:
        return None
    try:
        if not store.check([KEY_TOKEN]):
            return None
        token = store.get(KEY_TOKEN).decode()
        if token in seen:
            return None
        seen.add(token)
        payload = json.loads(store.get(KEY_PAYLOAD).decode())
        job_id, nodes = int(payload["job_id"]), int(payload["nodes"])
        scratch = settings.jobs_dir / f"{job_id}-join-{token}"
        try:
            job = _joined_job(settings, payload, scratch, token, (host, port), log)
            node = int(store.add(KEY_JOINED, 1))
            if node >= nodes:
                log(f"job {job_id} already has its {nodes} nodes; waiting for the next job")
                return "full"
            log(f"job {job_id}: joined as node {node} of {nodes}; waiting for the others")
            while not store.check([KEY_GO]):
                if store.check([KEY_END]):
                    log(f"job {job_id}: ended before it started ({store.get(KEY_END).decode()})")
                    return "ended"
                store.add(f"beat/{node}", 1)
                time.sleep(POLL_SECONDS)
            return _run_node(replace(job, node=node), store, node, log)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    except Exception as exc:  # noqa: BLE001 - one job's trouble must not stop the joiner serving the next
        log(f"rendezvous {host}:{port}: {type(exc).__name__}: {exc}")
        return "failed"


def _run_node(job: Any, store: Any, node: int, log: Callable[[str], None]) -> str:
    """Run this node's ranks until they finish, fail, or node 0 ends the job."""
    from studio.training.distributed import run_local_ranks

    job_id = job.ctx.job_id
    try:
        run_local_ranks(job, JoinedReporter(log, job_id), remote=NodeZeroWatch(store, node))
    except JobCancelled:
        log(f"job {job_id}: cancelled")
        return "cancelled"
    except StudioError as exc:
        log(f"job {job_id}: {exc}")
        with contextlib.suppress(Exception):  # node 0 may be gone already
            store.set(f"failed/{node}", str(exc))
        return "failed"
    log(f"job {job_id}: node {node} finished")
    return "done"


def _joined_job(
    settings: Any, payload: dict[str, Any], scratch: Path, token: str, rdzv: tuple[str, int], log: Callable
) -> Any:
    """The RankJob of a joined node, from node 0's payload and this host's own settings and device."""
    from studio.device import detect_device
    from studio.models.base_models import resolve_base_model
    from studio.schema import TrainRequest
    from studio.training.distributed import RankJob, rank_threads
    from studio.training.setup import TrainingData

    request = TrainRequest.model_validate(payload["request"])
    dataset = payload["dataset"]
    scratch.mkdir(parents=True, exist_ok=True)
    data_path = scratch / f"dataset{dataset['suffix']}"
    data_path.write_bytes(base64.b64decode(dataset["content"]))
    resume = None
    if payload.get("resume_name"):
        resume_dir = scratch / "resume" / payload["resume_name"]
        for name, content in payload["resume_files"].items():
            target = resume_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(base64.b64decode(content))
        resume = str(resume_dir)
    resolved = resolve_base_model(request.base_model, settings, progress=log)
    job_id = int(payload["job_id"])
    ctx = JoinedContext(job_id, settings, None, detect_device(settings.device), attempt=1, join_dir=scratch / "work")
    return RankJob(
        request=request,
        ctx=ctx,
        data=TrainingData(path=data_path, report=dataset["report"], sha256=dataset["sha256"], name=dataset["name"]),
        base_path=resolved.path,
        resume=resume,
        dataset_rows=int(payload["dataset_rows"]),
        port=0,
        threads=rank_threads(settings, request.hyper.processes),
        timeout_s=float(payload["timeout_s"]),
        nodes=int(payload["nodes"]),
        rdzv=rdzv,
        token=token,
    )


def join_distributed(
    settings: Any,
    endpoint: str,
    log: Callable[[str], None] = print,
    max_jobs: int | None = None,
    stop: Any = None,
) -> int:
    """Serve jobs over several hosts from ``endpoint`` (HOST:PORT) until stopped; returns the jobs joined.

    Polls the endpoint every second; ``max_jobs`` (tests) stops after that many jobs ran here,
    ``stop`` (an Event) stops between jobs.
    """
    host, port = parse_endpoint(endpoint, int(getattr(settings, "rdzv_port", 29400)))
    log(f"joining jobs over several hosts at {host}:{port}")
    seen: set[str] = set()
    joined = 0
    while max_jobs is None or joined < max_jobs:
        if stop is not None and stop.is_set():
            break
        outcome = join_once(settings, host, port, seen, log)
        if outcome in ("done", "cancelled", "failed", "ended"):
            joined += 1
        else:
            time.sleep(1.0)
    return joined
