"""Compare mode: a sweep whose searched setting is the variant itself, one trial per variant at one budget."""

from __future__ import annotations

import pytest
from conftest_training import chat_rows, cpu_device, register_chat_dataset, write_jsonl

from studio.errors import ValidationFailed
from studio.jobs.runner import WorkerIdentity
from studio.progress import MemoryReporter
from studio.schema import Choices, SweepRequest, TrainingHyperParams
from studio.services.jobs import JobService
from studio.sweeps.compare import comparison_report
from studio.sweeps.driver import LocalLauncher, load_study, run_sweep
from studio.sweeps.space import check_space, trial_request

VARIANTS = ["lora", "dora", "pissa"]


class NoQueue:
    """Stands in for Celery: the trials run on the launcher's threads."""

    def send(self, job_id: int) -> str:
        return f"task-{job_id}"

    def revoke(self, task_id) -> None:
        pass


@pytest.fixture
def dataset_id(registry, tmp_path):
    return register_chat_dataset(registry, write_jsonl(tmp_path / "data.jsonl", chat_rows(12))).id


def hyper(**fields) -> TrainingHyperParams:
    base = dict(
        max_steps=4, batch_size=4, max_length=64, warmup_ratio=0.0, validation_fraction=0.25,
        log_every=1, eval_every=2, save_every=1000, learning_rate=0.05, precision="fp32",
    )  # fmt: skip
    return TrainingHyperParams(**{**base, **fields})


def compare_request(base_dir, dataset_id, variants=VARIANTS, **fields) -> SweepRequest:
    return SweepRequest(
        mode="compare",
        dataset_id=dataset_id,
        base_model=str(base_dir),
        space={"variant": Choices(choices=list(variants))},
        hyper=hyper(),
        poll_seconds=0.05,
        **fields,
    )


def test_compare_mode_fills_one_trial_per_variant_and_no_pruning(tmp_path):
    request = compare_request(tmp_path, 1)
    assert request.n_trials == 3 and request.pruner == "none" and request.variant == "lora"
    assert request.first_trials == [{"variant": v} for v in VARIANTS]
    # JSON (the API, a stored job) gives the same request.
    again = SweepRequest.model_validate(request.model_dump(mode="json"))
    assert again == request


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pruner": "median"}, "prunes nothing"),
        ({"n_trials": 5}, "runs 3 trials"),
        ({"first_trials": [{"variant": "lora"}]}, "each variant once"),
    ],
)
def test_compare_mode_refuses_what_would_break_the_matched_budget(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        compare_request(tmp_path, 1, **fields)


def test_compare_mode_needs_variant_choices_only(tmp_path):
    with pytest.raises(ValueError, match="only `variant`"):
        SweepRequest(
            mode="compare",
            dataset_id=1,
            base_model="x",
            space={"variant": Choices(choices=VARIANTS), "learning_rate": Choices(choices=[0.1, 0.2])},
        )
    with pytest.raises(ValueError, match="at least two"):
        compare_request(tmp_path, 1, variants=["lora"])


def test_the_searched_variant_becomes_each_trial_s_variant_with_the_same_budget(tmp_path):
    request = compare_request(tmp_path, 1, variant_params={"lora_dropout": 0.0})
    settings = check_space(request)
    assert [s.key for s in settings] == ["variant"]
    trains = [trial_request(request, {"variant": v}, n) for n, v in enumerate(VARIANTS)]
    assert [t.variant for t in trains] == VARIANTS
    assert len({t.hyper.model_dump_json() for t in trains}) == 1 and {t.seed for t in trains} == {42}
    assert all(t.variant_params["lora_dropout"] == 0.0 for t in trains)
    assert trains[1].name.endswith("trial 1 · dora")


def test_a_preset_reaches_the_variants_that_declare_it(tmp_path):
    request = compare_request(tmp_path, 1, variants=["lora", "nlora"], variant_preset="small-model")
    from studio.variants.registry import get_variant

    expected = dict(get_variant("nlora").preset("small-model").values)
    assert trial_request(request, {"variant": "nlora"}, 1).variant_params == expected
    assert trial_request(request, {"variant": "lora"}, 0).variant_params == {}  # lora declares no such preset
    with pytest.raises(ValidationFailed, match="no variant of this sweep declares"):
        check_space(compare_request(tmp_path, 1, variant_preset="no-such-preset"))


def test_an_unknown_variant_choice_is_refused_by_name(tmp_path):
    with pytest.raises(ValidationFailed, match="'nope' is not a registered variant"):
        check_space(compare_request(tmp_path, 1, variants=["lora", "nope"]))


def test_a_variant_parameter_searched_beside_the_variant_must_exist_in_each(tmp_path):
    request = SweepRequest(
        dataset_id=1,
        base_model=str(tmp_path),
        space={"variant": Choices(choices=["lora", "dora"]), "r": Choices(choices=[2, 4])},
        hyper=hyper(),
    )
    assert [s.key for s in check_space(request)] == ["variant", "variant.r"]
    request = request.model_copy(
        update={"space": {"variant": Choices(choices=["lora", "dora"]), "nope": Choices(choices=[1, 2])}}
    )
    with pytest.raises(ValidationFailed, match="not a setting"):
        check_space(request)


@pytest.mark.slow
def test_a_comparison_sweep_trains_every_variant_once_and_reports_table_and_overlay(
    registry, settings, dataset_id, tiny_llama_dir
):
    request = compare_request(tiny_llama_dir, dataset_id)
    job_id = registry.create_job(kind="sweep", request=request.model_dump(mode="json"), schema_version=1).id
    launcher = LocalLauncher(JobService(registry, NoQueue()), settings, WorkerIdentity("test-compare", cpu_device()))

    result = run_sweep(request, MemoryReporter(), registry, job_id, launcher)

    assert (result["trials_complete"], result["trials_pruned"], result["trials_failed"]) == (3, 0, 0)
    trials = load_study(registry, job_id).get_trials()
    assert sorted(t.params["variant"] for t in trials) == sorted(VARIANTS)
    jobs = [registry.get_job(t.user_attrs["job_id"]) for t in trials]
    assert sorted(j.request["variant"] for j in jobs) == sorted(VARIANTS)
    # One budget: the same data, seed and training settings in every trial's job.
    assert len({(j.request["dataset_id"], j.request["seed"], str(j.request["hyper"])) for j in jobs}) == 1
    assert {j.result["steps"] for j in jobs} == {4}

    report = comparison_report(registry, job_id)
    assert [r[0] for r in report["rows"]] == [f"`{t.params['variant']}`" for t in trials]
    assert report["headers"][:4] == ["variant", "trainable", "train loss", "eval loss"]
    for run, row in zip(report["runs"], report["rows"], strict=True):
        assert run["status"] == "succeeded" and row[-1] == "succeeded"
        assert sorted(run["eval_curve"]) == [2, 4] and row[3] == pytest.approx(run["eval_curve"][4], abs=1e-4)
        assert len(run["train_loss"]) == 4 and run["seconds_per_step"] > 0
    # DoRA trains its magnitude vectors on top of LoRA's factors: the table shows the difference.
    params = {r["variant"]: r["trainable_params"] for r in report["runs"]}
    assert params["dora"] > params["lora"] == params["pissa"]
    figure = report["figure"]
    assert sorted(trace.name for trace in figure.data) == sorted(VARIANTS)
    assert all(list(trace.x) == [2, 4] for trace in figure.data)
    markdown = report["markdown"]
    assert all(f"| `{v}` |" in markdown for v in VARIANTS) and "data:image/svg+xml;base64," in markdown
    assert "4 steps × batch 4" in markdown


def invoke(args: list[str]):
    from click.testing import CliRunner

    from studio.cli import cli
    from studio.cli.common import services

    services.cache_clear()
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_cli_compare_queues_a_comparison_at_one_budget(settings, registry, dataset_id):
    args = ["sweep", "--dataset", str(dataset_id), "--compare", "lora,dora,nlora", "--steps", "7", "--base", "b"]
    result = invoke([*args, "--preset", "small-model", "--set", "lora_dropout=0", "--parallel", "2"])
    assert result.exit_code == 0, result.output
    [job] = registry.list_jobs(kind="sweep")
    request = SweepRequest.model_validate(job.request)
    assert request.mode == "compare" and request.space["variant"].choices == ["lora", "dora", "nlora"]
    assert request.variant_preset == "small-model"
    assert (request.n_trials, request.pruner, request.parallel, request.hyper.max_steps) == (3, "none", 2, 7)
    assert request.variant_params == {"lora_dropout": 0.0} and request.hyper.validation_fraction == 0.1
    assert "queued comparison sweep job" in result.output and "lora, dora, nlora" in result.output


@pytest.mark.parametrize(("workers", "placed"), [(1, "here"), (3, "workers")])
def test_cli_runs_the_trials_inside_the_sweep_when_too_few_workers_are_online(
    settings, registry, dataset_id, workers, placed
):
    """The sweep holds one worker: with one online (or none yet) a queued trial would wait forever."""
    for i in range(workers):
        registry.worker_heartbeat(
            f"w{i}", queue=settings.queue_name, hostname="h", pid=i, device="cpu", device_name="cpu"
        )
    result = invoke(["sweep", "--dataset", str(dataset_id), "--compare", "lora,dora", "--base", "b", "--parallel", "2"])
    assert result.exit_code == 0, result.output
    [job] = registry.list_jobs(kind="sweep")
    assert SweepRequest.model_validate(job.request).trials_on == placed
    said = "inside the sweep's own worker" if placed == "here" else "as train jobs on the other workers"
    assert f"its trials run {said}" in result.output


@pytest.mark.parametrize("extra", [[], ["--compare", "lora,dora", "--param", "r=int:2:8"]])
def test_cli_takes_a_search_space_or_variants_to_compare_not_both(settings, registry, dataset_id, extra):
    from studio.errors import StudioError

    with pytest.raises(StudioError, match="--param .* or the variants to compare"):
        invoke(["sweep", "--dataset", str(dataset_id), "--base", "b", *extra])
    assert registry.list_jobs(kind="sweep") == []


@pytest.mark.slow
def test_cli_compare_inline_prints_the_table(settings, registry, dataset_id, tiny_llama_dir):
    args = ["sweep", "--dataset", str(dataset_id), "--compare", "lora,dora", "--steps", "2", "--inline"]
    args += ["--base", str(tiny_llama_dir), "--set", "max_length=64", "--set", "eval_every=1", "--set", "batch_size=4"]
    result = invoke([*args, "--set", "validation_fraction=0.25", "--set", "precision=fp32"])
    assert result.exit_code == 0, result.output
    [job] = registry.list_jobs(kind="sweep")
    assert job.status == "succeeded", job.error
    assert "| variant | trainable | train loss | eval loss |" in result.output
    assert "| `lora` |" in result.output and "| `dora` |" in result.output
