"""The merge job end to end: real PEFT adapters on a tiny Llama, a SQLite registry, plain-PEFT reloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from studio.errors import JobCancelled, NotFoundError, ValidationFailed
from studio.merging.deltas import ParentChanges
from studio.merging.job import run_merge_job
from studio.merging.methods import ties_merge
from studio.progress import MemoryReporter
from studio.schema import MergeRequest, parse_request


def merge(env, **fields):
    """run_merge_job called directly, as the worker would, under a job row of its own."""
    from studio.schema import SCHEMA_VERSION

    request = MergeRequest(**fields)
    job = env.registry.create_job(
        kind="merge", name="merge", request=request.model_dump(mode="json"), schema_version=SCHEMA_VERSION, seed=0
    )
    env.ctx.job_id = job.id
    reporter = MemoryReporter()
    return run_merge_job(request, reporter, env.ctx), reporter


def parent_deltas(env, *adapters) -> list[dict[str, torch.Tensor]]:
    """{module: ΔW} of each adapter, read as the merge job reads them (all on one base)."""
    changes = ParentChanges([(Path(a.path), f"#{a.id}") for a in adapters], env.base_dir)
    out: list[dict[str, torch.Tensor]] = [{} for _ in adapters]
    for name, deltas, ranks in changes.modules():
        for i, (delta, rank) in enumerate(zip(deltas, ranks, strict=True)):
            if rank:
                out[i][name] = delta
    return out


def lora_delta(adapter_dir: Path, module: str) -> torch.Tensor:
    """scale · B @ A of ``module`` straight from the saved tensors (plain LoRA, no rsLoRA)."""
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    key = f"base_model.model.{module}"
    a, b = tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"]
    return (config["lora_alpha"] / config["r"]) * (b.double() @ a.double())


def merged_weights(env, adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The base with ``adapter_dir`` folded in by plain PEFT, as {parameter name: tensor}."""
    from peft import PeftModel

    from studio.training.models import load_base_model

    model = PeftModel.from_pretrained(load_base_model(env.base_dir, "causal-lm"), str(adapter_dir))
    return dict(model.merge_and_unload().named_parameters())


def base_weights(env) -> dict[str, torch.Tensor]:
    from studio.training.models import load_base_model

    return dict(load_base_model(env.base_dir, "causal-lm").named_parameters())


def test_parent_changes_are_the_lora_products_read_module_by_module(merge_env):
    a = merge_env.adapter("a", seed=1)
    b = merge_env.adapter("b", seed=2, r=2, target_modules=["q_proj", "k_proj"])
    changes = ParentChanges([(Path(a.path), "#a"), (Path(b.path), "#b")], merge_env.base_dir)
    before = {n: p.detach().clone() for n, p in changes.model.named_parameters()}
    assert len(changes.module_names) == 2 * 5  # 2 layers x (a's 4 targets + b's k_proj)
    deltas, ranks = changes.module("model.layers.0.self_attn.q_proj")
    assert ranks == [4, 2]
    torch.testing.assert_close(deltas[0].double(), lora_delta(Path(a.path), "model.layers.0.self_attn.q_proj"))
    torch.testing.assert_close(deltas[1].double(), lora_delta(Path(b.path), "model.layers.0.self_attn.q_proj"))
    deltas, ranks = changes.module("model.layers.1.mlp.up_proj")
    assert ranks == [4, 0] and torch.count_nonzero(deltas[1]) == 0  # b does not adapt it
    for name, param in changes.model.named_parameters():  # the float64 round trips changed nothing
        assert param.dtype == torch.float32 and torch.equal(param, before[name]), name


def test_dora_deltas_match_what_peft_merges(merge_env):
    adapter = merge_env.adapter("dora", seed=2, use_dora=True)
    (read,) = parent_deltas(merge_env, adapter)
    merged, base = merged_weights(merge_env, Path(adapter.path)), base_weights(merge_env)
    assert len(read) == 2 * 4
    for module, delta in read.items():
        torch.testing.assert_close(delta, merged[f"{module}.weight"] - base[f"{module}.weight"], rtol=1e-4, atol=1e-6)


def test_linear_merge_reloads_with_plain_peft_as_the_weighted_sum(merge_env):
    first = merge_env.adapter("first", seed=1)
    second = merge_env.adapter("second", seed=2, r=2, lora_alpha=16, use_rslora=True)
    result, reporter = merge(merge_env, adapter_ids=[first.id, second.id], weights=[0.7, 0.3], name="blend")

    row = merge_env.registry.get_adapter(result["adapter_id"])
    assert (row.variant, row.parents, row.name, row.dataset_id) == ("merge", [first.id, second.id], "blend", None)
    assert set(row.ranks.values()) == {6}  # r 4 + r 2: the exact rank of the sum
    assert row.metrics["merge_max_error"] < 1e-5 and result["merge_max_error"] == row.metrics["merge_max_error"]
    assert json.loads((Path(row.path) / "export_report.json").read_text())["exact"] is True

    d1, d2 = parent_deltas(merge_env, first, second)
    merged, base = merged_weights(merge_env, Path(row.path)), base_weights(merge_env)
    for module in d1:
        expected = base[f"{module}.weight"] + 0.7 * d1[module] + 0.3 * d2[module]
        torch.testing.assert_close(merged[f"{module}.weight"], expected, rtol=1e-5, atol=1e-6)
    untouched = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(merged[untouched], base[untouched])
    fractions = [step / total for step, total, _ in reporter.steps]
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)  # never goes back
    assert len(fractions) >= 2 + len(d1)  # a step per parent read and per module merged
    assert "weight 0.7" in (Path(row.path) / "README.md").read_text()


def test_a_smaller_rank_keeps_the_best_low_rank_part_and_reports_the_loss(merge_env):
    adapter = merge_env.adapter("wide", seed=3, r=8, lora_alpha=8)
    result, _ = merge(merge_env, adapter_ids=[adapter.id], rank=2)  # one adapter: resize it
    row = merge_env.registry.get_adapter(result["adapter_id"])
    assert set(row.ranks.values()) == {2} and (result["rank_min"], result["rank_max"]) == (2, 2)

    report = json.loads((Path(row.path) / "export_report.json").read_text())
    assert report["exact"] is False
    (delta,) = parent_deltas(merge_env, adapter)
    merged, base = merged_weights(merge_env, Path(row.path)), base_weights(merge_env)
    for module, full in delta.items():
        s = torch.linalg.svdvals(full.double())
        expected_error = float((s[2:].square().sum() / s.square().sum()).sqrt())
        assert report["errors"][module] == pytest.approx(expected_error, rel=1e-5)
        got = (merged[f"{module}.weight"] - base[f"{module}.weight"]).double()
        assert float(torch.linalg.matrix_norm(got - full.double()) / torch.linalg.matrix_norm(full.double())) == (
            pytest.approx(expected_error, rel=1e-3)
        )
    assert row.metrics["merge_max_error"] == pytest.approx(max(report["errors"].values()))


def test_ties_merge_writes_the_best_lora_of_the_ties_result(merge_env):
    first, second = merge_env.adapter("first", seed=1), merge_env.adapter("second", seed=2)
    result, _ = merge(merge_env, adapter_ids=[first.id, second.id], method="ties", density=0.3)
    assert result["weights"] == [1.0, 1.0]  # ties' default: its disjoint mean already averages
    row = merge_env.registry.get_adapter(result["adapter_id"])
    report = json.loads((Path(row.path) / "export_report.json").read_text())

    d1, d2 = parent_deltas(merge_env, first, second)
    merged, base = merged_weights(merge_env, Path(row.path)), base_weights(merge_env)
    for module in d1:
        target = ties_merge([d1[module], d2[module]], [1.0, 1.0], 0.3).double()
        got = (merged[f"{module}.weight"] - base[f"{module}.weight"]).double()
        assert row.ranks[module] == 8  # the sum of the parents' ranks
        s = torch.linalg.svdvals(target)
        best = float((s[8:].square().sum() / s.square().sum()).sqrt())  # Eckart-Young: no rank-8 does better
        assert report["errors"][module] == pytest.approx(best, rel=1e-5)
        error = float(torch.linalg.matrix_norm(got - target) / torch.linalg.matrix_norm(target))
        assert error == pytest.approx(best, rel=1e-3, abs=1e-6)


def test_the_job_runs_through_the_runner_and_can_be_evaluated(merge_env):
    from studio.device import detect_device
    from studio.evaluation.loading import load_adapter
    from studio.jobs.runner import WorkerIdentity, execute_job

    a, b = merge_env.adapter("a", seed=1), merge_env.adapter("b", seed=2)
    job = merge_env.jobs.submit({"kind": "merge", "adapter_ids": [a.id, b.id]})
    assert job.kind == "merge" and merge_env.jobs.dispatcher.sent == [job.id]
    assert job.base_model == a.base_model  # listed and filtered with the jobs of that model
    status = execute_job(job.id, merge_env.registry, merge_env.settings, WorkerIdentity("w", detect_device("cpu")))
    job = merge_env.registry.get_job(job.id)
    assert status == "succeeded", job.error
    assert job.progress == 1.0 and job.result["parents"] == [a.id, b.id] and job.result["weights"] == [0.5, 0.5]
    row = merge_env.registry.get_adapter(job.result["adapter_id"])
    loaded = load_adapter(row, merge_env.settings, "cpu", None, print)  # what eval and the playground use
    assert loaded.task == "causal-lm" and "merge" in loaded.description
    assert {m.name for m in merge_env.registry.metrics(job.id)} == {"merge_max_error", "merge_mean_error"}


def test_adapters_of_different_bases_are_refused_at_submission(merge_env, tmp_path):
    from conftest_training import make_llama_dir

    other_base = make_llama_dir(tmp_path / "other-base", seed=5)
    a = merge_env.adapter("a", seed=1)
    b = merge_env.adapter("b", seed=2, base=other_base)
    with pytest.raises(ValidationFailed, match="different base models") as error:
        merge_env.jobs.submit(MergeRequest(adapter_ids=[a.id, b.id]))
    assert f"#{b.id} is for {other_base}" in str(error.value)
    assert merge_env.registry.list_jobs() == []  # nothing queued


@pytest.mark.parametrize(
    "kind,message",
    [
        ("classifier", "is a classifier"),
        ("head", "trains lm_head in full"),
        ("loraprune", "pruning masks"),
        ("pickle", "pickled weights are never loaded"),
    ],
)
def test_adapters_a_lora_cannot_carry_are_refused(merge_env, kind, message):
    a = merge_env.adapter("a", seed=1)
    if kind == "head":
        b = merge_env.adapter("b", seed=2, modules_to_save=["lm_head"])
    else:
        b = merge_env.adapter("b", seed=2)
        folder = Path(b.path)
        if kind == "classifier":
            config = json.loads((folder / "adapter_config.json").read_text())
            (folder / "adapter_config.json").write_text(json.dumps({**config, "task_type": "SEQ_CLS"}))
        elif kind == "loraprune":
            (folder / "pruning_masks.safetensors").write_bytes(b"")
        else:
            (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(ValidationFailed, match=message):
        merge_env.jobs.submit(MergeRequest(adapter_ids=[a.id, b.id]))
    with pytest.raises(ValidationFailed, match=message):  # the worker checks again (files can change)
        merge(merge_env, adapter_ids=[a.id, b.id])


def test_adapters_of_different_peft_types_are_refused_with_the_way_round(merge_env):
    from peft import AdaLoraConfig, get_peft_model

    from studio.training.models import load_base_model

    config = AdaLoraConfig(r=4, target_modules=["q_proj"], total_step=10, init_lora_weights=False)
    folder = merge_env.tmp_path / "adalora"
    get_peft_model(load_base_model(merge_env.base_dir, "causal-lm"), config).save_pretrained(str(folder))
    ada = merge_env.registry.add_adapter(
        name="ada", variant="adalora", base_model=str(merge_env.base_dir), path=str(folder), sha256="0"
    )
    lora = merge_env.adapter("a", seed=1)
    with pytest.raises(ValidationFailed, match=f"ADALORA: #{ada.id}; LORA: #{lora.id}.*merge #{ada.id} alone first"):
        merge_env.jobs.submit(MergeRequest(adapter_ids=[lora.id, ada.id]))
    alone, _ = merge(merge_env, adapter_ids=[ada.id])  # the way round: now a plain LoRA
    converted = merge_env.registry.get_adapter(alone["adapter_id"])
    assert json.loads((Path(converted.path) / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert alone["merge_max_error"] < 1e-5
    merge_env.jobs.submit(MergeRequest(adapter_ids=[lora.id, converted.id]))  # accepted


def test_request_errors_name_the_field():
    with pytest.raises(ValidationFailed, match=r"Weights: give one weight per adapter \(1 given for 2 adapters\)"):
        parse_request({"kind": "merge", "adapter_ids": [1, 2], "weights": [1.0]})
    with pytest.raises(ValidationFailed, match="each adapter may appear only once"):
        parse_request({"kind": "merge", "adapter_ids": [3, 3]})
    with pytest.raises(ValidationFailed, match="at least one weight"):
        parse_request({"kind": "merge", "adapter_ids": [1, 2], "weights": [0, 0]})
    with pytest.raises(ValidationFailed, match="Adapter ids: needs at least 1 item"):
        parse_request({"kind": "merge", "adapter_ids": []})


def test_unknown_adapter_is_refused(merge_env):
    with pytest.raises(NotFoundError):
        merge_env.jobs.submit(MergeRequest(adapter_ids=[99]))


def test_adapters_that_cancel_out_give_a_clear_error(merge_env, tmp_path):
    import shutil

    a = merge_env.adapter("a", seed=1)
    twin = tmp_path / "twin"
    shutil.copytree(a.path, twin)  # the same adapter again: +1 and -1 cancel exactly
    b = merge_env.registry.add_adapter(name="b", variant="lora", base_model=a.base_model, path=str(twin), sha256="0")
    with pytest.raises(ValidationFailed, match="cancel out"):
        merge(merge_env, adapter_ids=[a.id, b.id], weights=[1.0, -1.0])


def test_cancellation_stops_before_anything_is_written(merge_env):
    a, b = merge_env.adapter("a", seed=1), merge_env.adapter("b", seed=2)
    reporter = MemoryReporter()
    reporter.cancel_event.set()
    with pytest.raises(JobCancelled):
        run_merge_job(MergeRequest(adapter_ids=[a.id, b.id]), reporter, merge_env.ctx)  # stops before the registry
    assert sorted(row.id for row in merge_env.registry.list_adapters()) == [a.id, b.id]
    assert not any(merge_env.settings.adapters_dir.iterdir())


def test_studio_merge_queues_a_job_and_refuses_bad_requests(merge_env, monkeypatch, settings):
    """`studio merge` on the CLI's own services (the test's data dir; no worker, so the job stays queued)."""
    from click.testing import CliRunner

    from studio.cli import cli
    from studio.cli.common import services
    from studio.errors import StudioError

    registry = services().registry
    a, b = (
        registry.add_adapter(name=row.name, variant="lora", base_model=row.base_model, path=row.path, sha256="0")
        for row in (merge_env.adapter("a", seed=1), merge_env.adapter("b", seed=2))
    )
    runner = CliRunner()
    args = ["merge", str(a.id), str(b.id), "--method", "ties", "--weight", "1", "--weight", "0.5", "--rank", "4"]
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "queued merge job 1 (ties: 1 × 1, 2 × 0.5)" in result.output
    job = services().jobs.get(1)
    assert (job.kind, job.status) == ("merge", "queued")
    assert job.request["weights"] == [1.0, 0.5] and job.request["rank"] == 4 and job.request["density"] == 0.2
    with pytest.raises(StudioError, match=r"one weight per adapter \(1 given for 2 adapters\)"):
        runner.invoke(cli, ["merge", "1", "2", "--weight", "1"], catch_exceptions=False)
    with pytest.raises(StudioError, match="adapter 7 does not exist"):
        runner.invoke(cli, ["merge", "1", "7"], catch_exceptions=False)
    assert [j.id for j in services().jobs.list()] == [1]


def test_a_failure_while_writing_leaves_no_half_written_adapter(merge_env, monkeypatch):
    from studio.merging import job as merge_job

    a, b = merge_env.adapter("a", seed=1), merge_env.adapter("b", seed=2)

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(merge_job, "model_card", disk_full)
    with pytest.raises(OSError, match="No space"):
        merge(merge_env, adapter_ids=[a.id, b.id])
    assert not any(merge_env.settings.adapters_dir.iterdir())
    assert sorted(row.id for row in merge_env.registry.list_adapters()) == [a.id, b.id]


def test_dare_merge_is_reproducible_by_seed(merge_env):
    a, b = merge_env.adapter("a", seed=1), merge_env.adapter("b", seed=2)
    first, _ = merge(merge_env, adapter_ids=[a.id, b.id], method="dare_linear", density=0.5, seed=3)
    again, _ = merge(merge_env, adapter_ids=[a.id, b.id], method="dare_linear", density=0.5, seed=3)
    other, _ = merge(merge_env, adapter_ids=[a.id, b.id], method="dare_linear", density=0.5, seed=4)
    assert first["weights"] == [0.5, 0.5]

    def weights_of(result):
        return merged_weights(merge_env, Path(merge_env.registry.get_adapter(result["adapter_id"]).path))

    one, two, three = weights_of(first), weights_of(again), weights_of(other)
    module = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(one[module], two[module]) and not torch.equal(one[module], three[module])
    card = (Path(merge_env.registry.get_adapter(first["adapter_id"]).path) / "README.md").read_text()
    assert "DARE" in card and "density 0.5" in card
