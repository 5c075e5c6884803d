"""A training job over several hosts, simulated on one machine: node 0 (the job) and a joiner process.

The joiner is what `studio worker --join-distributed` runs, started here as its own process; the
two meet at a c10d TCPStore on 127.0.0.1 and train with gloo. Same losses as one process at the
same effective batch; a node that never comes fails the job within the rendezvous timeout; a
cancel stops the ranks on both nodes.
"""

from __future__ import annotations

import multiprocessing
import time

import pytest
from conftest_training import chat_rows, cpu_device, make_request, register_chat_dataset, write_jsonl

from studio.errors import JobCancelled, StudioError
from studio.jobs.context import JobContext
from studio.progress import MemoryReporter, RegistryReporter
from studio.schema import TrainingHyperParams
from studio.training.distributed import free_port


@pytest.fixture
def dataset_id(registry, tmp_path):
    return register_chat_dataset(registry, write_jsonl(tmp_path / "data.jsonl", chat_rows(12))).id


@pytest.fixture
def host_settings(settings):
    """Node 0's worker: a rendezvous on a free local port, a short wait for the other node."""
    return settings.model_copy(
        update={"rdzv_host": "127.0.0.1", "rdzv_port": free_port(), "rdzv_timeout_seconds": 60.0, "torch_threads": 1}
    )


def job_request(base_dir, dataset_id, nodes, **hyper):
    settings = dict(max_steps=4, validation_fraction=0.25, precision="fp32", processes=1, nodes=nodes)
    request = make_request("lora", {"lora_dropout": 0.0}, **{**settings, **hyper})
    return request.model_copy(update={"base_model": str(base_dir), "dataset_id": dataset_id, "transfer_kit": False})


def start(registry, settings, request):
    job_id = registry.create_job(kind="train", request=request.model_dump(mode="json"), schema_version=1).id
    return job_id, JobContext(job_id, settings, registry, cpu_device(), attempt=1)


def start_joiner(settings):
    """`studio worker --join-distributed 127.0.0.1:PORT` for one job, in its own process (another "host")."""
    from studio.training.multinode import join_distributed

    endpoint = f"{settings.rdzv_host}:{settings.rdzv_port}"
    joiner = multiprocessing.get_context("spawn").Process(
        target=join_distributed, args=(settings, endpoint), kwargs={"max_jobs": 1}, name="studio-joiner"
    )
    joiner.start()
    return joiner


def losses(registry, job_id):
    return {m.step: m.value for m in registry.metrics(job_id) if m.name == "loss"}


@pytest.mark.slow
def test_two_nodes_match_one_process_at_the_same_effective_batch(registry, host_settings, dataset_id, tiny_llama_dir):
    from studio.training.job import run_train_job

    results = {}
    joiner = start_joiner(host_settings)
    try:
        for nodes in (2, 1):
            request = job_request(tiny_llama_dir, dataset_id, nodes)
            job_id, ctx = start(registry, host_settings, request)
            results[nodes] = (job_id, run_train_job(request, RegistryReporter(registry, job_id, 0.0), ctx))
            if nodes == 2:
                joiner.join(timeout=30)
                assert joiner.exitcode == 0, "the joiner ran its rank and returned after the job"
    finally:
        if joiner.is_alive():
            joiner.kill()
    (one_id, one), (two_id, two) = results[1], results[2]
    assert sorted(losses(registry, two_id)) == [1, 2, 3, 4]
    for step, loss in losses(registry, one_id).items():
        assert losses(registry, two_id)[step] == pytest.approx(loss, abs=1e-5)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], abs=1e-5)
    assert two["distributed"]["world_size"] == 2 and two["distributed"]["nodes"] == 2
    assert registry.get_adapter(two["adapter_id"]).source_job_id == two_id
    assert not multiprocessing.active_children()


def test_a_node_that_never_arrives_fails_the_job_within_the_timeout(
    registry, host_settings, dataset_id, tiny_llama_dir
):
    from studio.training.job import run_train_job

    settings = host_settings.model_copy(update={"rdzv_timeout_seconds": 2.0})
    request = job_request(tiny_llama_dir, dataset_id, 2)
    _, ctx = start(registry, settings, request)
    reporter = MemoryReporter()
    started = time.monotonic()
    command = f"studio worker --join-distributed 127.0.0.1:{settings.rdzv_port}"
    with pytest.raises(StudioError, match=f"waited 2 s for 1 more node; start `{command}` on another host"):
        run_train_job(request, reporter, ctx)
    assert time.monotonic() - started < 10
    assert any("waiting for 1 more node(s)" in line for _, line in reporter.logs)
    assert not multiprocessing.active_children()


def test_a_worker_without_a_rendezvous_refuses_a_job_over_several_hosts(registry, settings, dataset_id, tiny_llama_dir):
    from studio.training.job import run_train_job

    request = job_request(tiny_llama_dir, dataset_id, 2)
    _, ctx = start(registry, settings, request)
    with pytest.raises(StudioError, match="no STUDIO_RDZV_HOST"):
        run_train_job(request, MemoryReporter(), ctx)


class CancelAtStep(MemoryReporter):
    def progress(self, step, total=None, message=None):
        super().progress(step, total, message)
        if step >= 2:
            self.cancel_event.set()


@pytest.mark.slow
def test_cancel_stops_the_ranks_on_both_nodes(registry, host_settings, dataset_id, tiny_llama_dir):
    from studio.training.checkpoint import read_checkpoint
    from studio.training.job import run_train_job

    request = job_request(tiny_llama_dir, dataset_id, 2, max_steps=5000, validation_fraction=0.0)
    _, ctx = start(registry, host_settings, request)
    joiner = start_joiner(host_settings)
    reporter = CancelAtStep()
    try:
        with pytest.raises(JobCancelled):
            run_train_job(request, reporter, ctx)
        cancelled_at = time.monotonic()
        joiner.join(timeout=30)
        assert joiner.exitcode == 0 and time.monotonic() - cancelled_at < 30, "the other node stopped too"
    finally:
        if joiner.is_alive():
            joiner.kill()
    path, step = reporter.checkpoints[-1]
    assert 2 <= step < 5000 and read_checkpoint(path).step == step
    assert not multiprocessing.active_children()


def test_the_examples_per_step_cover_every_rank_of_every_node():
    with pytest.raises(ValueError, match=r"4 processes \(2 nodes\) need at least 4 examples per step"):
        TrainingHyperParams(processes=2, nodes=2, batch_size=1, grad_accum=3)
    assert TrainingHyperParams(processes=2, nodes=2, batch_size=2, grad_accum=2).nodes == 2


def test_endpoints_are_parsed_with_the_default_port():
    from studio.training.multinode import parse_endpoint

    assert parse_endpoint("head:1234", 29400) == ("head", 1234)
    assert parse_endpoint("head", 29400) == ("head", 29400)
    with pytest.raises(StudioError, match="not a number"):
        parse_endpoint("head:x", 29400)


class KillTheOtherNodesRank(MemoryReporter):
    """SIGKILLs the joined node's rank (as an OOM killer on that host would) once rank 0 reports a step."""

    def __init__(self, joiner):
        super().__init__()
        self.joiner, self.killed_at = joiner, None

    def progress(self, step, total=None, message=None):
        import psutil

        super().progress(step, total, message)
        if self.killed_at is None:
            ranks = psutil.Process(self.joiner.pid).children()
            assert len(ranks) == 1, "the joiner runs one rank (processes=1)"
            ranks[0].kill()
            self.killed_at = time.monotonic()


@pytest.mark.slow
def test_a_rank_that_dies_on_the_other_node_fails_the_job_within_seconds(
    registry, host_settings, dataset_id, tiny_llama_dir
):
    from studio.training.job import run_train_job

    request = job_request(tiny_llama_dir, dataset_id, 2, max_steps=5000, validation_fraction=0.0)
    _, ctx = start(registry, host_settings, request)
    joiner = start_joiner(host_settings)
    reporter = KillTheOtherNodesRank(joiner)
    try:
        with pytest.raises(StudioError, match="rank 1 of 2 failed|node 1: "):
            run_train_job(request, reporter, ctx)
        assert reporter.killed_at is not None and time.monotonic() - reporter.killed_at < 15
        joiner.join(timeout=30)
        assert joiner.exitcode == 0, "the joiner survives its rank and returns to waiting (max_jobs=1: it exits)"
    finally:
        if joiner.is_alive():
            joiner.kill()
    assert not multiprocessing.active_children()
