"""One training job over several processes on the worker's host (torch.distributed, data parallel).

How it runs
    The worker's job process is the *parent*: it starts ``processes`` ranks with the ``spawn``
    start method of :mod:`torch.multiprocessing` (not ``torchrun``) and trains in none of them.
    Spawned children are plain ``multiprocessing.Process`` objects of the parent, so the parent
    sees each rank's exit code within a poll interval, can kill exactly its own ranks, and gets
    rank 0's messages (logs, metrics, checkpoints, the result) through one queue: cancelling and
    noticing a dead rank need no extra agent, rendezvous store or log scraping, which a
    ``torchrun`` subprocess would. ``spawn`` (not ``fork``) because a forked copy of a process that
    already holds a database connection, OpenMP threads or a CUDA context is unsafe.

What each rank does
    Every rank builds the same model from the same seed (so the adapters start identical) and
    trains on a contiguous slice of every optimizer step's examples
    (:meth:`studio.training.data.BatchPlan.rank_examples`): the effective batch stays
    ``batch_size × grad_accum`` whatever the number of processes. After backward the adapter's
    gradients (only the trainable tensors: the frozen base has none) are *summed* across the
    ranks in one flat all-reduce, with the step's loss. The loss of a step is normalised by the
    number of targets of the whole step (agreed across the ranks before the forward pass), so
    the summed gradient is exactly the one-process gradient and the losses match one process
    (up to float summation order). This manual all-reduce is used instead of wrapping the model
    in ``DistributedDataParallel`` because (1) DDP averages gradients, and our per-step target
    normalisation needs a sum; (2) variants reach into the PEFT model (``model.base_model``,
    their own modules, parameters added mid-run by IncreLoRA) and DDP's wrapper and its fixed
    buckets would hide or miss them; (3) the all-reduce must happen once per optimizer step,
    after gradient accumulation, and before clipping and the variant's hooks, which is one call
    here instead of ``no_sync`` bookkeeping. The price: no overlap of communication with the
    backward pass (measured in bench/distributed.py; small for adapter-sized gradients).

    Rank 0 alone reports progress and metrics, runs the validation passes, writes checkpoints and
    saves the adapter; the other ranks wait for it at the next step's collective.

Cancel and failures
    Cancelling sets an event every rank reads at the start of a step; the ranks agree on it in the
    same all-reduce that agrees the step's target count, so all stop after the same step and rank
    0 writes the checkpoint. A rank that exits (crash, out of memory, killed) is noticed by the
    parent within a poll interval: it kills the other ranks and fails the job. A rank that hangs
    is caught by the collective timeout (``Settings.distributed_timeout_seconds``): the ranks
    waiting for it raise and exit, and the parent fails the job.

Devices: CPU ranks use the gloo backend and share the cores (``torch_threads`` or the host's
cores divided by the number of ranks); CUDA ranks use NCCL, one GPU each (``cuda:<rank>``).
With ``hyper.fsdp`` the decoder layers are sharded (FSDP2, :mod:`studio.training.fsdp`) and FSDP sums
those gradients; the all-reduce here then carries only the loss and any unsharded trainable tensors.
"""

from __future__ import annotations

import os
import queue as queue_module
import socket
import time
import traceback
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from studio.errors import JobCancelled, StudioError
from studio.progress import Reporter

POLL_SECONDS = 0.2
CANCEL_GRACE_SECONDS = 120.0  # after a cancel, how long the ranks get to stop cleanly before they are killed


@dataclass
class RankGroup:
    """This process's place in the job: rank, world size, and the collectives the training loop calls."""

    rank: int
    world: int
    cancel: Any  # a multiprocessing Event set by the parent when the job is cancelled
    device: Any = "cpu"  # where the all-reduce buffers live (the rank's device)

    def agree(self, counts: list[int]) -> list[int]:
        """The step's counts summed over the ranks; raises JobCancelled on every rank when any saw a cancel."""
        import torch
        import torch.distributed as dist

        buffer = torch.tensor([*counts, int(self.cancel.is_set())], dtype=torch.float64, device=self.device)
        dist.all_reduce(buffer)
        values = [int(v) for v in buffer.tolist()]
        if values[-1]:
            raise JobCancelled()
        return values[:-1]

    def sum_tensors(self, tensors: list[Any], loss: Any) -> Any:
        """Sum ``tensors`` in place across the ranks (one flat all-reduce); returns the summed ``loss``."""
        import torch
        import torch.distributed as dist

        parts = [t.reshape(-1).float() for t in tensors] + [loss.reshape(1).float().to(self.device)]
        flat = torch.cat(parts)
        dist.all_reduce(flat)
        offset = 0
        for tensor in tensors:
            n = tensor.numel()
            tensor.copy_(flat[offset : offset + n].view_as(tensor).to(tensor.dtype))
            offset += n
        return flat[offset]


@dataclass
class RankJob:
    """What a rank needs to train (picklable: it crosses into the spawned process)."""

    request: Any
    ctx: Any  # JobContext without its registry
    data: Any
    base_path: Path
    resume: str | None
    dataset_rows: int
    port: int
    threads: int | None = None
    timeout_s: float = 1800.0
    nodes: int = 1  # hosts the job runs on (studio.training.multinode), each with request.hyper.processes ranks
    node: int = 0  # this host's place: its ranks are node × processes + local rank
    rdzv: tuple[str, int] | None = None  # the c10d TCPStore of a job over several hosts (None: one host)
    token: str = ""  # names this job's keys in that store

    @property
    def processes(self) -> int:
        """Ranks on this host."""
        return self.request.hyper.processes

    @property
    def world(self) -> int:
        """Ranks on every host together."""
        return self.processes * self.nodes


class QueueReporter(Reporter):
    """Rank 0's reporter: every call becomes a message to the parent, which forwards it to the real reporter."""

    def __init__(self, messages: Any, cancel: Any) -> None:
        super().__init__()
        self.messages, self.cancel = messages, cancel

    def log(self, message: str, level: str = "info") -> None:
        self.messages.put(("log", (message, level)))

    def progress(self, step: int, total: int | None = None, message: str | None = None) -> None:
        self.messages.put(("progress", (step, total, message)))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.messages.put(("metrics", (step, {k: float(v) for k, v in values.items()})))

    def ranks(self, step: int, ranks: dict[str, int], extra: dict[str, dict[str, Any]] | None = None) -> None:
        self.messages.put(("ranks", (step, dict(ranks), extra)))

    def checkpoint(self, path: str, step: int) -> None:
        self.messages.put(("checkpoint", (path, step)))

    def is_cancelled(self) -> bool:
        return self.cancel.is_set()


class QuietReporter(QueueReporter):
    """The other ranks' reporter: only warnings and errors reach the job log (prefixed with the rank)."""

    def __init__(self, messages: Any, cancel: Any, rank: int) -> None:
        super().__init__(messages, cancel)
        self.rank = rank

    def log(self, message: str, level: str = "info") -> None:
        if level in ("warning", "error"):
            super().log(f"rank {self.rank}: {message}", level)

    def progress(self, step: int, total: int | None = None, message: str | None = None) -> None:
        pass

    def metrics(self, step: int, values: dict[str, float]) -> None:
        pass

    def ranks(self, step: int, ranks: dict[str, int], extra: dict[str, dict[str, Any]] | None = None) -> None:
        pass

    def checkpoint(self, path: str, step: int) -> None:
        pass


def free_port() -> int:
    """A TCP port free on this host now, for the ranks' rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rank_threads(settings: Any, world: int) -> int:
    """CPU threads per rank: the configured ``torch_threads``, else the host's cores shared out."""
    configured = getattr(settings, "torch_threads", None)
    if configured:
        return int(configured)
    return max(1, (os.cpu_count() or 1) // world)


def rank_devices(device: Any, world: int) -> list[str]:
    """The torch device of each rank: one GPU per rank on CUDA, the CPU for every rank otherwise."""
    if device.type != "cuda":
        return ["cpu"] * world
    import torch

    available = torch.cuda.device_count()
    if available < world:
        raise StudioError(f"{world} processes need {world} GPUs; this worker sees {available}")
    return [f"cuda:{rank}" for rank in range(world)]


@dataclass
class Outcome:
    """What the parent collected from the ranks."""

    result: dict[str, Any] | None = None
    cancelled: bool = False
    errors: dict[int, str] = field(default_factory=dict)  # rank -> the error it reported before exiting


def train_across_processes(job: RankJob, reporter: Reporter) -> dict[str, Any]:
    """Run the job on ``request.hyper.processes`` ranks; returns rank 0's trained-adapter summary.

    With ``job.nodes > 1`` this host is node 0 of a job over several hosts: it opens the
    rendezvous, waits for the other nodes (:mod:`studio.training.multinode`) and runs ranks
    0 … processes − 1 here.

    Raises JobCancelled when the job was cancelled (rank 0 wrote a checkpoint first), and
    StudioError when a rank failed or died (the others are killed; nothing is left running).
    """
    import multiprocessing

    if multiprocessing.current_process().daemon:
        raise StudioError(
            "this worker runs jobs in a daemonic process, which cannot start the ranks of a job over several "
            "processes; run the worker with --pool=solo (as `studio worker` does)"
        )
    if job.nodes > 1:
        from studio.training.multinode import train_as_node_zero

        return train_as_node_zero(job, reporter)
    return run_local_ranks(job, reporter)


def run_local_ranks(job: RankJob, reporter: Reporter, remote: Any = None) -> dict[str, Any]:
    """Start this host's ranks of ``job`` and watch them; returns rank 0's summary (on node 0).

    ``remote`` (node 0 of a job over several hosts) is called every poll and returns why another
    node failed, or None; a failure there stops this host's ranks and fails the job.
    """
    import torch.multiprocessing as mp

    devices = rank_devices(job.ctx.device, job.processes)
    context = mp.get_context("spawn")
    messages = context.Queue()
    cancel = context.Event()
    first = job.node * job.processes
    procs = [
        context.Process(target=_rank_main, args=(local, job, messages, cancel), name=f"studio-rank-{first + local}")
        for local in range(job.processes)
    ]
    reporter.log(
        f"training over {job.world} processes ({'nccl' if devices[0] != 'cpu' else 'gloo'})"
        + (f", node {job.node} of {job.nodes}" if job.nodes > 1 else "")
        + ": "
        + ", ".join(f"rank {first + r} on {d}" for r, d in enumerate(devices))
    )
    outcome = Outcome()
    try:
        for proc in procs:
            proc.start()
        _watch(procs, messages, cancel, reporter, outcome, remote, first, job.world)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        for proc in procs:
            proc.join(timeout=10)
        messages.close()
    if outcome.cancelled:
        raise JobCancelled()
    if job.node != 0:
        return {}
    if outcome.result is None:
        raise StudioError("rank 0 finished without a result")
    return outcome.result


def _watch(
    procs: list[Any],
    messages: Any,
    cancel: Any,
    reporter: Reporter,
    outcome: Outcome,
    remote: Any = None,
    first: int = 0,
    world: int | None = None,
) -> None:
    """Forward rank 0's messages until every rank exited; kill them all once one fails or a cancel times out."""
    cancelled_at: float | None = None
    while True:
        _drain(messages, reporter, outcome, wait=POLL_SECONDS)
        failure = remote() if remote is not None else None
        if failure is not None:
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
            if cancelled_at is not None:  # the other nodes' ranks stopped on the cancel too
                outcome.cancelled = True
                return
            raise StudioError(f"{failure}; the other ranks were stopped")
        if cancelled_at is None and reporter.is_cancelled():
            cancel.set()
            cancelled_at = time.monotonic()
            reporter.log("cancel requested: stopping every rank after the current step")
        codes = [proc.exitcode for proc in procs]
        failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            _drain(messages, reporter, outcome, wait=0.0)  # the failed rank's last words
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
            # A rank killed by a signal (negative exit code: the OOM killer, a SIGKILL) is the cause; its peers
            # then fail on the broken connection and may exit before this poll sees the first death.
            local = min(failed, key=lambda r: (codes[r] >= 0, r))
            rank = first + local
            reason = outcome.errors.get(rank) or f"it exited with code {codes[local]}"
            if outcome.cancelled or (cancelled_at is not None and not outcome.errors):
                outcome.cancelled = True
                return
            raise StudioError(f"rank {rank} of {world or len(procs)} failed: {reason}; the other ranks were stopped")
        if all(code == 0 for code in codes):
            _drain(messages, reporter, outcome, wait=0.0)
            return
        if cancelled_at is not None and time.monotonic() - cancelled_at > CANCEL_GRACE_SECONDS:
            for proc in procs:
                proc.kill()
            outcome.cancelled = True
            reporter.log(f"ranks did not stop within {CANCEL_GRACE_SECONDS:.0f} s of the cancel; killed", "warning")
            return


def _drain(messages: Any, reporter: Reporter, outcome: Outcome, wait: float) -> None:
    """Forward every queued message; waits up to ``wait`` seconds for the first one."""
    while True:
        try:
            kind, payload = messages.get(timeout=wait) if wait > 0 else messages.get_nowait()
        except (queue_module.Empty, OSError, EOFError):
            return
        wait = 0.0
        if kind == "log":
            reporter.log(*payload)
        elif kind == "progress":
            reporter.progress(*payload)
        elif kind == "metrics":
            reporter.metrics(*payload)
        elif kind == "ranks":
            reporter.ranks(*payload)
        elif kind == "checkpoint":
            reporter.checkpoint(*payload)
        elif kind == "result":
            outcome.result = payload
        elif kind == "cancelled":
            outcome.cancelled = True
        elif kind == "error":
            rank, message = payload
            outcome.errors.setdefault(rank, message)


def _rank_main(local: int, job: RankJob, messages: Any, cancel: Any) -> None:
    """One rank: join the group, train, and (rank 0) save the adapter and send its summary."""
    import torch
    import torch.distributed as dist

    from studio.device import DeviceInfo

    rank, world = job.node * job.processes + local, job.world
    device = rank_devices(job.ctx.device, job.processes)[local]
    if device == "cpu":
        torch.set_num_threads(job.threads or rank_threads(job.ctx.settings, job.processes))
        rank_device = DeviceInfo(**{**job.ctx.device.__dict__, "type": "cpu", "index": None})
    else:
        torch.cuda.set_device(device)
        rank_device = replace(job.ctx.device, index=local)
    reporter: Reporter = QueueReporter(messages, cancel) if rank == 0 else QuietReporter(messages, cancel, rank)
    try:
        backend = "gloo" if device == "cpu" else "nccl"
        timeout = timedelta(seconds=job.timeout_s)
        if job.rdzv is None:
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job.port))
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
        else:
            from studio.training.multinode import group_store

            store = group_store(job.rdzv, job.token, timeout)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
        group = RankGroup(rank, world, cancel, device)
        ctx = replace(job.ctx, device=rank_device)
        summary = _train_rank(job, reporter, ctx, group)
        if rank == 0:
            devices = rank_devices(job.ctx.device, job.processes)
            summary["distributed"] = {
                **summary.get("distributed", {}),
                "world_size": world,
                "nodes": job.nodes,
                "backend": dist.get_backend(),
                "devices": devices,
                "threads_per_rank": torch.get_num_threads() if device == "cpu" else None,
            }
            messages.put(("result", summary))
    except JobCancelled:
        if rank == 0:
            messages.put(("cancelled", None))
    except StudioError as exc:
        messages.put(("error", (rank, str(exc))))
        _exit(messages, 1)
    except BaseException as exc:  # noqa: BLE001 - whatever it was, the parent must learn of it and fail the job
        messages.put(("log", (f"rank {rank}: {traceback.format_exc()}", "error")))
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        messages.put(("error", (rank, f"{type(exc).__name__}: {text}" if text else type(exc).__name__)))
        _exit(messages, 1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    _exit(messages, 0)


def _exit(messages: Any, code: int) -> None:
    """Leave the rank with ``code`` once its messages reached the parent."""
    messages.close()
    messages.join_thread()
    os._exit(code)  # no atexit handlers: a spawned rank owns nothing the parent still needs


def _train_rank(job: RankJob, reporter: Reporter, ctx: Any, group: RankGroup) -> dict[str, Any]:
    """Train this rank's share; rank 0 also saves the adapter and returns the job summary."""
    from studio.training.job import finish_training
    from studio.training.loop import run_training

    result = run_training(
        job.request,
        reporter,
        settings=ctx.settings,
        device=ctx.device,
        work_dir=ctx.work_dir,
        resume_checkpoint=job.resume,
        dataset=job.data,
        base_path=job.base_path,
        group=group,
    )
    if group.rank != 0:
        return {}
    allreduce = {
        "allreduce_s": result.allreduce_seconds,
        "allreduce_share": result.allreduce_seconds / result.train_seconds if result.train_seconds else None,
    }
    summary = finish_training(result, job.request, reporter, ctx, job.data, job.base_path, job.dataset_rows)
    summary["distributed"] = allreduce
    return summary


def train_in_group(
    requests: list[Any], data: Any, base_path: Path, work_root: Path, world: int, threads: int = 1
) -> list[dict[str, Any]]:
    """Train ``requests`` one after the other in one group of ``world`` CPU ranks (tests and benchmarks).

    Not a job (no registry, nothing saved): the group starts once, so a matrix of variants costs
    one start-up. Returns, per request, rank 0's step losses and timings.
    """
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    messages = context.Queue()
    port = free_port()
    args = (world, port, requests, data, Path(base_path), Path(work_root), threads, messages)
    procs = [context.Process(target=_group_main, args=(rank, *args)) for rank in range(world)]
    for proc in procs:
        proc.start()
    results: list[dict[str, Any]] = []
    try:
        while len(results) < len(requests):
            try:
                kind, payload = messages.get(timeout=POLL_SECONDS)
            except queue_module.Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed or all(p.exitcode == 0 for p in procs):
                    raise StudioError(f"a rank exited early (exit codes {[p.exitcode for p in procs]})") from None
                continue
            if kind == "error":
                raise StudioError(f"rank {payload[0]}: {payload[1]}")
            results.append(payload)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    return results


def _group_main(rank, world, port, requests, data, base_path, work_root, threads, messages) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        group = RankGroup(rank, world, _NeverSet())
        for index, request in enumerate(requests):
            result = run_training_for_group(request, data, base_path, work_root / f"{index}-rank{rank}", group)
            if rank == 0:
                messages.put(("result", result))
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - reported to the caller, which raises
        messages.put(("error", (rank, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")))
        _exit(messages, 1)
    _exit(messages, 0)


def run_training_for_group(request: Any, data: Any, base_path: Path, work_dir: Path, group: Any) -> dict[str, Any]:
    """One run on the CPU (in a group, or alone when ``group`` is None): its step losses and timings."""
    from studio.device import DeviceInfo
    from studio.progress import MemoryReporter
    from studio.training.loop import run_training

    reporter = MemoryReporter()
    result = run_training(
        request,
        reporter,
        settings=None,
        device=DeviceInfo("cpu", "CPU"),
        work_dir=work_dir,
        dataset=data,
        base_path=base_path,
        group=group,
    )
    return {
        "variant": request.variant,
        "losses": dict(result.losses),
        "train_seconds": result.train_seconds,
        "allreduce_seconds": result.allreduce_seconds,
        "real_tokens": result.real_tokens,
        "steps": result.total_steps,
        "grad_norms": {step: value for step, name, value in reporter.metric_rows if name == "grad_norm"},
        "sharded": any(message.startswith("fsdp: ") for _, message in reporter.logs),
    }


class _NeverSet:
    """A cancel event nobody sets (train_in_group runs are not cancellable)."""

    def is_set(self) -> bool:
        return False
