"""A training job over several processes (torch.distributed, gloo on the CPU).

Two processes give the losses of one process at the same effective batch (the variant matrix
trains in one group of ranks, so it pays the start-up once); killing a rank ends the job within
seconds; cancelling stops every rank after rank 0 wrote a checkpoint; what cannot run is refused
at submit time. Sharded (FSDP), every variant it accepts gives the losses of one process, and a
sharded run checkpoints and resumes as an unsharded one does.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
from conftest_training import chat_rows, cpu_device, make_request, register_chat_dataset, write_jsonl
from pydantic import ValidationError

from studio.errors import JobCancelled, StudioError
from studio.jobs.context import JobContext
from studio.progress import MemoryReporter, RegistryReporter
from studio.schema import TrainingHyperParams, TrainRequest


def no_dropout(variant: str) -> dict:
    """Dropout masks differ with the batch split; the comparison turns it off (as every variant allows)."""
    from studio.variants.registry import get_variant

    return {"lora_dropout": 0.0} if "lora_dropout" in get_variant(variant).Params.model_fields else {}


@pytest.mark.slow
def test_two_processes_match_one_for_the_variant_matrix(tiny_llama_dir, chat_data, tmp_path):
    from studio.training.distributed import run_training_for_group, train_in_group
    from studio.variants.registry import variant_names

    # every registered variant; each step's 4 examples are split 2 + 2 between the ranks
    requests = [make_request(v, no_dropout(v), max_steps=6, batch_size=4, precision="fp32") for v in variant_names()]
    one = [
        run_training_for_group(r, chat_data, tiny_llama_dir, tmp_path / f"one-{i}", None)
        for i, r in enumerate(requests)
    ]
    two = train_in_group(requests, chat_data, tiny_llama_dir, tmp_path / "two", world=2)
    for request, alone, group in zip(requests, one, two, strict=True):
        assert group["variant"] == request.variant and sorted(group["losses"]) == list(range(1, 7))
        for step, loss in alone["losses"].items():
            assert group["losses"][step] == pytest.approx(loss, abs=1e-5), (request.variant, step)
        assert group["real_tokens"] == alone["real_tokens"]  # the ranks together saw every example once
        assert 0 < group["allreduce_seconds"] < group["train_seconds"]


def sharded_variants() -> list[str]:
    """Every registered variant FSDP does not refuse (studio.training.distributed_rules.FSDP_REFUSED)."""
    from studio.training.distributed_rules import FSDP_REFUSED
    from studio.variants.registry import variant_names

    return [v for v in variant_names() if v not in FSDP_REFUSED]


@pytest.fixture(scope="module")
def fsdp_matrix(tiny_llama_dir, tmp_path_factory):
    """Each variant FSDP accepts, trained alone and sharded over two ranks (one group for them all)."""
    from studio.training.distributed import run_training_for_group, train_in_group
    from studio.training.setup import TrainingData

    root = tmp_path_factory.mktemp("fsdp-matrix")
    data = TrainingData(path=write_jsonl(root / "chat.jsonl", chat_rows(12)), sha256="test", name="chat")
    # validated as a user's request is: processes=2 with fsdp (alone, the same request trains unsharded)
    requests = [
        make_request(v, no_dropout(v), max_steps=6, batch_size=4, precision="fp32", processes=2, fsdp=True)
        for v in sharded_variants()
    ]
    one = [run_training_for_group(r, data, tiny_llama_dir, root / f"one-{i}", None) for i, r in enumerate(requests)]
    two = train_in_group(requests, data, tiny_llama_dir, root / "two", world=2)
    return {r.variant: (alone, group) for r, alone, group in zip(requests, one, two, strict=True)}


@pytest.mark.slow
@pytest.mark.parametrize("variant", sharded_variants())
def test_fsdp_over_two_processes_matches_one_for_the_variant(variant, fsdp_matrix):
    alone, group = fsdp_matrix[variant]
    assert group["variant"] == variant and group["sharded"] and not alone["sharded"]
    assert sorted(group["losses"]) == sorted(alone["losses"]) == list(range(1, 7))
    for step, loss in alone["losses"].items():
        assert group["losses"][step] == pytest.approx(loss, abs=1e-5), step
    # a gradient off by a constant factor hides from AdamW's losses, not from the norm; 1e-4 because sharded
    # reductions sum in another order (LoRA+ at step 6: 1.7e-5 apart), far below any factor's error
    assert group["grad_norms"] == pytest.approx(alone["grad_norms"], rel=1e-4)
    assert group["real_tokens"] == alone["real_tokens"]


def test_fsdp_refuses_the_other_variants_each_with_its_reason():
    from studio.training.distributed_rules import FSDP_REFUSED
    from studio.variants.registry import variant_names

    assert set(FSDP_REFUSED) <= set(variant_names())  # no stale names
    assert len(set(FSDP_REFUSED.values())) == len(FSDP_REFUSED)
    for variant, reason in FSDP_REFUSED.items():
        hyper = TrainingHyperParams(processes=2, fsdp=True)
        with pytest.raises(ValidationError, match=f"variant {variant} cannot train with fsdp") as caught:
            TrainRequest(dataset_id=1, base_model="tiny", variant=variant, hyper=hyper)
        assert reason in str(caught.value)
        # the same variant still trains over several processes without sharding
        assert TrainRequest(dataset_id=1, base_model="tiny", variant=variant, hyper=TrainingHyperParams(processes=2))
    for variant in sharded_variants():
        hyper = TrainingHyperParams(processes=2, fsdp=True)
        assert TrainRequest(dataset_id=1, base_model="tiny", variant=variant, hyper=hyper).hyper.fsdp


@pytest.fixture
def dataset_id(registry, tmp_path):
    return register_chat_dataset(registry, write_jsonl(tmp_path / "data.jsonl", chat_rows(12))).id


def job_request(base_dir, dataset_id, processes, **hyper):
    settings = dict(max_steps=4, validation_fraction=0.25, precision="fp32", processes=processes)
    request = make_request("lora", {"lora_dropout": 0.0}, **{**settings, **hyper})
    return request.model_copy(update={"base_model": str(base_dir), "dataset_id": dataset_id, "transfer_kit": False})


def start(registry, settings, request):
    job_id = registry.create_job(kind="train", request=request.model_dump(mode="json"), schema_version=1).id
    return job_id, JobContext(job_id, settings, registry, cpu_device(), attempt=1)


def losses(registry, job_id):
    return {m.step: m.value for m in registry.metrics(job_id) if m.name == "loss"}


@pytest.mark.slow
def test_a_two_process_job_matches_one_process_and_records_its_world(registry, settings, dataset_id, tiny_llama_dir):
    from studio.training.job import run_train_job

    results = {}
    for processes in (1, 2):
        request = job_request(tiny_llama_dir, dataset_id, processes, save_every=2)
        job_id, ctx = start(registry, settings, request)
        results[processes] = (job_id, run_train_job(request, RegistryReporter(registry, job_id, 0.0), ctx))
    (one_id, one), (two_id, two) = results[1], results[2]
    assert sorted(losses(registry, two_id)) == [1, 2, 3, 4]
    for step, loss in losses(registry, one_id).items():
        assert losses(registry, two_id)[step] == pytest.approx(loss, abs=1e-5)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], abs=1e-5)
    assert two["distributed"]["world_size"] == 2 and two["distributed"]["backend"] == "gloo"
    assert two["distributed"]["devices"] == ["cpu", "cpu"] and "distributed" not in one
    assert registry.get_adapter(two["adapter_id"]).source_job_id == two_id
    # rank 0 wrote the checkpoint and the parent recorded it on the job
    assert registry.get_job(two_id).checkpoint_path.endswith("step-000002")
    assert not multiprocessing.active_children()


class KillRankOne(MemoryReporter):
    """Kills rank 1 (SIGKILL, as the OOM killer would) once rank 0 reports its first step."""

    killed_at: float | None = None

    def progress(self, step, total=None, message=None):
        super().progress(step, total, message)
        if self.killed_at is None:
            rank = next(p for p in multiprocessing.active_children() if p.name == "studio-rank-1")
            os.kill(rank.pid, signal.SIGKILL)
            self.killed_at = time.monotonic()


@pytest.mark.slow
def test_a_rank_that_dies_fails_the_job_within_seconds(registry, settings, dataset_id, tiny_llama_dir):
    from studio.training.job import run_train_job

    request = job_request(tiny_llama_dir, dataset_id, 2, max_steps=5000, validation_fraction=0.0)
    _, ctx = start(registry, settings, request)
    reporter = KillRankOne()
    with pytest.raises(StudioError, match="rank 1 of 2 failed"):
        run_train_job(request, reporter, ctx)
    assert reporter.killed_at is not None and time.monotonic() - reporter.killed_at < 15
    assert not multiprocessing.active_children()  # rank 0 was stopped too


class CancelAtStep(MemoryReporter):
    def progress(self, step, total=None, message=None):
        super().progress(step, total, message)
        if step >= 2:
            self.cancel_event.set()


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["replicated", "sharded"])
def test_cancel_stops_every_rank_after_a_checkpoint(registry, settings, dataset_id, tiny_llama_dir, fsdp):
    from studio.training.checkpoint import read_checkpoint
    from studio.training.job import run_train_job

    request = job_request(tiny_llama_dir, dataset_id, 2, max_steps=5000, validation_fraction=0.0, fsdp=fsdp)
    _, ctx = start(registry, settings, request)
    reporter = CancelAtStep()
    with pytest.raises(JobCancelled):
        run_train_job(request, reporter, ctx)
    assert reporter.checkpoints, "rank 0 saves where the ranks stopped"
    path, step = reporter.checkpoints[-1]
    assert 2 <= step < 5000 and read_checkpoint(path).step == step
    assert not multiprocessing.active_children()


@pytest.mark.slow
def test_fsdp_matches_one_process_and_saves_a_plain_peft_adapter(registry, settings, dataset_id, tiny_llama_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from studio.training.job import run_train_job

    results = {}
    for processes, fsdp in ((1, False), (2, True)):
        request = job_request(tiny_llama_dir, dataset_id, processes, fsdp=fsdp, eval_every=2)
        job_id, ctx = start(registry, settings, request)
        results[processes] = (job_id, run_train_job(request, RegistryReporter(registry, job_id, 0.0), ctx))
    (one_id, one), (two_id, two) = results[1], results[2]
    assert sorted(losses(registry, two_id)) == [1, 2, 3, 4]
    # the same sums as without FSDP: each rank's share of the loss, gradients summed (reduce-scatter)
    for step, loss in losses(registry, one_id).items():
        assert losses(registry, two_id)[step] == pytest.approx(loss, abs=1e-5)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], abs=1e-5)
    # validation mid-run too: every rank runs the sharded model on the validation rows, rank 0 reports
    mid = [{m.step: m.value for m in registry.metrics(j) if m.name == "eval_loss"} for j in (one_id, two_id)]
    assert 2 in mid[0] and sorted(mid[1]) == sorted(mid[0])
    assert mid[1][2] == pytest.approx(mid[0][2], abs=1e-5)
    # AdamW hides a gradient off by a constant factor from the losses; the logged norm does not
    norms = [{m.step: m.value for m in registry.metrics(j) if m.name == "grad_norm"} for j in (one_id, two_id)]
    assert sorted(norms[1]) == sorted(norms[0]) == [1, 2, 3, 4]
    assert norms[1] == pytest.approx(norms[0], rel=1e-5)
    assert two["distributed"]["world_size"] == 2
    assert any("2 decoder layers sharded over 2 processes" in row.message for row in registry.job_logs(two_id))
    path = registry.get_adapter(two["adapter_id"]).path
    reference = registry.get_adapter(one["adapter_id"]).path
    tokens = torch.tensor([[1, 5, 9, 13, 2]])
    outputs = []
    for folder in (path, reference):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), folder).eval()
        with torch.no_grad():
            outputs.append(model(input_ids=tokens).logits)
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-4, rtol=0)
    with torch.no_grad():
        untrained = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()(input_ids=tokens).logits
    assert (outputs[0] - untrained).abs().max() > 1e-3  # the saved adapter carries the training


def adapter_tensors(registry, adapter_id):
    from safetensors.torch import load_file

    return load_file(str(Path(registry.get_adapter(adapter_id).path) / "adapter_model.safetensors"))


@pytest.mark.slow
def test_a_sharded_run_writes_ordinary_checkpoints_and_resumes_exactly(registry, settings, dataset_id, tiny_llama_dir):
    import torch
    from safetensors.torch import load_file

    from studio.training.job import run_train_job

    def train(request):
        job_id, ctx = start(registry, settings, request)
        return job_id, run_train_job(request, RegistryReporter(registry, job_id, 0.0), ctx)

    one_id, _ = train(job_request(tiny_llama_dir, dataset_id, 1, save_every=2))
    fsdp_request = job_request(tiny_llama_dir, dataset_id, 2, fsdp=True, save_every=2)
    fsdp_id, straight = train(fsdp_request)
    # the same checkpoint at the same step as one process: rank 0 wrote the gathered, whole tensors
    paths = [Path(registry.get_job(j).checkpoint_path) for j in (one_id, fsdp_id)]
    assert [p.name for p in paths] == ["step-000002", "step-000002"]
    assert {f.name for f in paths[1].iterdir()} == {f.name for f in paths[0].iterdir()}
    weights = [load_file(str(p / "trainable.safetensors")) for p in paths]
    assert sorted(weights[1]) == sorted(weights[0]) and any("lora_A" in n for n in weights[0])
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, atol=1e-5, rtol=0)
    states = [torch.load(p / "trainer_state.pt", weights_only=True)["optimizers"][0] for p in paths]
    assert sorted(states[1]["state"]) == sorted(states[0]["state"]) == list(range(len(weights[0])))
    assert [g["params"] for g in states[1]["param_groups"]] == [g["params"] for g in states[0]["param_groups"]]
    for index, moments in states[0]["state"].items():
        for key, value in moments.items():  # step, exp_avg, exp_avg_sq: whole, not rank 0's shard
            torch.testing.assert_close(states[1]["state"][index][key], value, atol=1e-6, rtol=1e-4)

    # a second sharded job resumes from that checkpoint: steps 3-4 and the adapter as if never interrupted
    resumed_id, resumed = train(fsdp_request.model_copy(update={"resume_from_job": fsdp_id}))
    assert sorted(losses(registry, resumed_id)) == [3, 4]
    assert any("resumed from" in row.message and "step 2" in row.message for row in registry.job_logs(resumed_id))
    for step in (3, 4):
        assert losses(registry, resumed_id)[step] == pytest.approx(losses(registry, fsdp_id)[step], abs=1e-5)
    final, reference = (adapter_tensors(registry, r["adapter_id"]) for r in (resumed, straight))
    assert sorted(final) == sorted(reference)
    for name, tensor in reference.items():
        torch.testing.assert_close(final[name], tensor, atol=1e-5, rtol=0)


def test_what_cannot_run_over_several_processes_is_refused_at_submit():
    with pytest.raises(ValidationError, match="FSDP.* needs more than one process"):
        TrainingHyperParams(processes=1, fsdp=True)
    assert TrainingHyperParams(processes=2, fsdp=True).fsdp
    with pytest.raises(ValidationError, match="keep_checkpoints: adapters kept along training cannot be written"):
        TrainingHyperParams(processes=2, fsdp=True, keep_checkpoints=4)
    with pytest.raises(ValidationError, match="variant adalora cannot train with fsdp"):
        TrainRequest(
            dataset_id=1, base_model="tiny", variant="adalora", hyper=TrainingHyperParams(processes=2, fsdp=True)
        )
    with pytest.raises(ValidationError, match="need at least 4 examples per step"):
        TrainingHyperParams(processes=4, batch_size=1, grad_accum=3)
    assert TrainingHyperParams(processes=2, batch_size=1, grad_accum=2).processes == 2


def test_refused_variants_say_why(monkeypatch):
    from studio.training import distributed_rules

    monkeypatch.setitem(distributed_rules.REFUSED, "lora", "a reason")
    hyper = TrainingHyperParams(processes=2)
    with pytest.raises(ValidationError, match="variant lora cannot train over several processes: a reason"):
        TrainRequest(dataset_id=1, base_model="tiny", variant="lora", hyper=hyper)
    assert TrainRequest(dataset_id=1, base_model="tiny", variant="lora").hyper.processes == 1


def test_the_rank_killed_by_a_signal_is_blamed_not_the_peer_that_lost_it():
    """Both ranks have exited by the time the parent looks: rank 0 on the broken connection, rank 1 SIGKILLed."""
    import queue
    from types import SimpleNamespace

    from studio.training.distributed import Outcome, _watch

    procs = [SimpleNamespace(exitcode=1, is_alive=lambda: False), SimpleNamespace(exitcode=-9, is_alive=lambda: False)]
    outcome = Outcome(errors={0: "RuntimeError: Connection closed by peer"})
    cancel = SimpleNamespace(set=lambda: None)
    with pytest.raises(StudioError, match=r"rank 1 of 2 failed: it exited with code -9"):
        _watch(procs, queue.Queue(), cancel, MemoryReporter(), outcome, world=2)
    procs[1].exitcode = 2  # no signal: the lower rank is reported, with its own error
    with pytest.raises(StudioError, match="rank 0 of 2 failed: RuntimeError: Connection closed"):
        _watch(procs, queue.Queue(), cancel, MemoryReporter(), outcome, world=2)
