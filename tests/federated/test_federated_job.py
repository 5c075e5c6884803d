"""The federated job end to end: a dataset imported for real, the handler run as a worker runs it (no broker),
per-round metrics in the registry, an adapter plain PEFT loads; DP runs account ε; over-budget runs are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest_training import COLORS

from studio.errors import ValidationFailed
from studio.progress import MemoryReporter, RegistryReporter
from studio.schema import SCHEMA_VERSION, FederatedRequest, parse_request

SQUARE = ["q_proj", "o_proj"]
WARM = {"sun", "fire"}


def colour_rows(n: int = 36) -> list[dict]:
    """Alpaca rows about colours with a label column (warm / cool) and a site column."""
    items = list(COLORS.items())
    rows = []
    for i in range(n):
        thing, colour = items[i % len(items)]
        label = "warm" if thing in WARM else "cool"
        rows.append(
            {
                "instruction": f"what color is the {thing}",
                "output": f"the {thing} is {colour}",
                "label": label,
                "site": f"s{i % 3}",
            }
        )
    return rows


@pytest.fixture
def env(settings, registry, tmp_path, tiny_llama_dir):
    from studio.device import detect_device
    from studio.jobs.context import JobContext
    from studio.services.datasets import DatasetService

    path = tmp_path / "colours.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in colour_rows()), encoding="utf-8")
    dataset = DatasetService(registry, settings).add(path)
    ctx = JobContext(job_id=0, settings=settings, registry=registry, device=detect_device("cpu"), attempt=1)

    class Env:
        pass

    e = Env()
    e.settings, e.registry, e.ctx, e.dataset, e.base = settings, registry, ctx, dataset, tiny_llama_dir
    return e


def make(env, **extra) -> FederatedRequest:
    fields = dict(
        dataset_id=env.dataset.id,
        base_model=str(env.base),
        clients=3,
        rounds=2,
        local_steps=3,
        r=4,
        lora_alpha=8,
        learning_rate=2e-2,
        batch_size=4,
        max_length=64,
        target_modules=SQUARE,
        seed=1,
    )
    return FederatedRequest(**{**fields, **extra})


def run_job(env, request: FederatedRequest, reporter=None):
    from studio.jobs.handlers import get_handler

    job = env.registry.create_job(
        kind="federated", name="f", request=request.model_dump(mode="json"), schema_version=SCHEMA_VERSION, seed=1
    )
    env.ctx.job_id = job.id
    reporter = reporter or RegistryReporter(env.registry, job.id)
    return get_handler("federated")(request, reporter, env.ctx), job.id


@pytest.mark.slow
def test_the_job_registers_a_peft_lora_with_per_round_metrics(env):
    from peft import PeftModel

    from studio.training.models import load_base_model

    request = make(env, split="dirichlet", alpha=0.5, label_column="label")
    result, job_id = run_job(env, request)
    row = env.registry.get_adapter(result["adapter_id"])
    assert row.variant == "lora" and row.source_job_id == job_id and row.dataset_id == env.dataset.id
    assert set(row.ranks.values()) == {4} and len(row.ranks) == 4  # 2 layers × q_proj, o_proj
    assert row.metrics["eval_loss"] < row.metrics["initial_eval_loss"]
    model = PeftModel.from_pretrained(load_base_model(env.base, "causal-lm"), row.path)
    assert model.peft_config["default"].r == 4
    # per-round curves in the registry, as a training job's (step = round; round 0 before training)
    points = env.registry.metrics(job_id)
    by_name: dict[str, list[int]] = {}
    for p in points:
        by_name.setdefault(p.name, []).append(p.step)
    assert sorted(by_name["val_loss"]) == [0, 1, 2]
    assert sorted(by_name["bytes_up"]) == [0, 1, 2]
    assert {f"client_{k}_loss" for k in (1, 2, 3)} <= set(by_name)
    assert sorted(by_name["client_1_loss"]) == [1, 2]
    assert "epsilon" not in by_name
    ups = {p.step: p.value for p in points if p.name == "bytes_up"}
    assert ups[0] == 0 and ups[1] > 0
    # the split covers every training row once and follows the label column
    mix = result["label_mix"]
    assert set(mix) == {"client 1", "client 2", "client 3"}
    assert sum(result["partitions"]) == sum(sum(c.values()) for c in mix.values())
    record = json.loads((Path(row.path) / "federated.json").read_text())
    assert record["strategy"] == "fedit" and set(record["val_loss"]) == {"0", "1", "2"}


@pytest.mark.slow
def test_a_dp_run_records_epsilon_growing_each_round(env):
    request = make(
        env, strategy="ffa", rounds=3, local_steps=2, privacy={"noise_multiplier": 1.0, "max_grad_norm": 1.0}
    )
    reporter = MemoryReporter()
    result, _ = run_job(env, request, reporter)
    eps = reporter.series("epsilon")
    assert [s for s, _ in eps] == [0, 1, 2, 3]
    values = [v for _, v in eps]
    assert values[0] == 0 and values[1] > 0 and values[1] < values[2] < values[3]
    # the planned bound holds for what was spent, and the adapter records the final ε
    assert result["epsilon"] == pytest.approx(values[-1])
    assert any("DP-SGD: σ = 1" in message for _, message in reporter.logs)


def test_an_over_budget_run_is_refused_before_training_with_the_numbers(env, monkeypatch):
    from studio.privacy.accounting import PrivacyBudgetExceeded

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr("studio.federated.simulation.run_federated_simulation", no_training)
    request = make(env, rounds=5, local_steps=10, privacy={"noise_multiplier": 0.5, "target_epsilon": 1.0})
    with pytest.raises(PrivacyBudgetExceeded) as refused:
        run_job(env, request, MemoryReporter())
    message = str(refused.value)
    assert "50 DP-SGD steps" in message and "σ = 0.5" in message and "ε = 1" in message
    assert "raise the noise to σ ≥" in message
    assert env.registry.list_adapters() == []


def test_a_target_epsilon_alone_picks_a_noise_that_fits(env):
    from studio.federated.planning import plan_privacy

    request = make(env, rounds=4, local_steps=5, privacy={"target_epsilon": 3.0})
    plan = plan_privacy(request, [40, 50, 60])
    assert plan.steps == 20 and plan.sample_rate == pytest.approx(4 / 40)
    assert plan.privacy.noise_multiplier > 0 and plan.epsilon <= 3.0


def test_schema_messages_say_what_to_fix(env):
    with pytest.raises(ValidationFailed) as caught:
        parse_request({**make(env).model_dump(mode="json"), "privacy": {"max_grad_norm": 1.0}})
    assert "noise σ or a target ε" in str(caught.value)
    with pytest.raises(ValidationFailed) as caught:
        parse_request({**make(env).model_dump(mode="json"), "privacy": {"noise_multiplier": 0, "target_epsilon": 2}})
    assert "σ = 0 gives no privacy" in str(caught.value)
    with pytest.raises(ValidationFailed) as caught:
        parse_request({**make(env).model_dump(mode="json"), "strategy": "fedavg"})
    assert "Strategy" in str(caught.value)
    with pytest.raises(ValidationFailed) as caught:
        parse_request({**make(env).model_dump(mode="json"), "split": "dirichlet", "clients": 1})
    assert "at least 2 clients" in str(caught.value)
    assert parse_request(make(env).model_dump(mode="json")).kind == "federated"


def test_split_preview_reads_the_label_column_back_and_refuses_missing_columns(env):
    from studio.federated.planning import load_rows, preview_split

    request = make(env, split="column", client_column="site")
    preview = preview_split(load_rows(env.dataset, request), request)
    assert len(preview.parts) == 3 and all(preview.parts)
    assert all(set(counts) == {"cool", "warm"} for counts in preview.mix.values())
    assert preview.lines()[0].startswith("client 1: ")
    with pytest.raises(ValidationFailed) as caught:
        load_rows(env.dataset, make(env, split="dirichlet", label_column="topic"))
    assert "'topic'" in str(caught.value) and "'label'" in str(caught.value)


def test_the_setup_before_round_0_reports_what_it_is_doing(env, monkeypatch):
    """Reading, loading the base and starting Flower each report a message (the page said a bare "0% done")."""

    class Stop(Exception):
        pass

    def simulation_up_to_flower(*args, phase=None, **kwargs):
        phase("starting Flower")  # what the real simulation says before round 0
        raise Stop

    monkeypatch.setattr("studio.federated.simulation.run_federated_simulation", simulation_up_to_flower)
    reporter = MemoryReporter()
    with pytest.raises(Stop):
        run_job(env, make(env, rounds=2), reporter)
    messages = [message for step, total, message in reporter.steps]
    assert all(step == 0 and total == 2 for step, total, _ in reporter.steps)
    assert messages[0].startswith(f"reading dataset {env.dataset.id}")
    assert messages[1] == f"loading the base model {env.base}"
    assert messages[-1] == "starting Flower"
