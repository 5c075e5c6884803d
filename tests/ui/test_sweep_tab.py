"""Sweep tab: the space table comes from the schemas, a submit queues a checked sweep, a sweep's view shows its
charts, trials and best adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app import tab_sweep
from studio.errors import ValidationFailed


@pytest.fixture
def dataset(services, tmp_path):
    from studio.services.datasets import DatasetService

    rows = [{"instruction": f"what color is item {i}", "output": f"colour {i % 3}"} for i in range(20)]
    path = tmp_path / "colours.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return DatasetService(services.registry, services.settings).add(path)


def tick(rows: list[list], setting: str, **values) -> list[list]:
    """The table with ``setting`` ticked and its columns set from ``values``."""
    out = []
    for row in rows:
        row = list(row)
        if row[1] == setting:
            row[0] = True
            for name, value in values.items():
                row[tab_sweep.COLUMNS.index(name)] = value
        out.append(row)
    return out


HYPER = {"max_steps": 4, "validation_fraction": 0.2}


def test_the_tab_is_in_the_app_and_builds(services):
    import gradio as gr

    from app.main import build_app, tab_modules

    assert tab_sweep.available() and tab_sweep in tab_modules()
    ids = {getattr(block, "elem_id", None) for block in build_app(services).blocks.values()}
    assert {"sweep-space", "sweep-submit", "sweep-history", "sweep-parallel", "sweep-best-zip"} <= ids
    assert isinstance(build_app(services), gr.Blocks)


def test_the_space_table_lists_each_variants_settings_from_the_schema():
    rows = {row[1]: row for row in tab_sweep.space_rows("lora")}
    assert rows["variant.r"][2] == "int" and rows["variant.r"][3] < 8 < rows["variant.r"][4]
    lr = rows["hyper.learning_rate"]
    assert lr[2] == "float" and lr[5] is True and lr[3] < 2e-4 < lr[4]  # log scale around the default
    assert rows["hyper.lr_scheduler"][2] == "choice" and rows["hyper.lr_scheduler"][6] == "linear, cosine, constant"
    assert "hyper.validation_fraction" not in rows and "hyper.eval_every" not in rows  # fixed in a sweep
    assert not any(row[0] for row in rows.values())  # nothing searched until ticked
    adalora = {row[1] for row in tab_sweep.space_rows("adalora")}
    assert {"variant.init_r", "variant.target_r"} <= adalora and "variant.init_r" not in rows  # its own fields


def test_ticked_rows_become_the_space_and_refusals_name_the_setting():
    rows = tab_sweep.space_rows("lora")
    table = tick(tick(rows, "variant.r", low=4, high=16), "hyper.lr_scheduler", choices="linear, cosine")
    space = tab_sweep.space_from_table(table)
    assert set(space) == {"variant.r", "hyper.lr_scheduler"}
    assert (space["variant.r"].low, space["variant.r"].high) == (4, 16)
    assert space["hyper.lr_scheduler"].choices == ["linear", "cosine"]
    with pytest.raises(ValidationFailed, match="tick at least one setting"):
        tab_sweep.space_from_table(rows)
    with pytest.raises(ValidationFailed, match=r"variant.r: low \(16\) must be below high \(4\)"):
        tab_sweep.space_from_table(tick(rows, "variant.r", low=16, high=4))
    with pytest.raises(ValidationFailed, match="hyper.learning_rate: give its low"):
        tab_sweep.space_from_table(tick(rows, "hyper.learning_rate", low=None))
    # A whole-number setting's 4.7 was cut to 4 ("low (4) must be below high (4)"); inf crashed int().
    with pytest.raises(ValidationFailed, match="variant.r: low 4.7 must be a whole number"):
        tab_sweep.space_from_table(tick(rows, "variant.r", low=4.7, high=8))
    for bad in ("inf", "-inf"):
        with pytest.raises(ValidationFailed, match="variant.r: high must be a finite number"):
            tab_sweep.space_from_table(tick(rows, "variant.r", low=4, high=bad))
    assert tab_sweep.space_from_table(tick(rows, "variant.r", low=4.0, high="8"))["variant.r"].high == 8


def test_submit_queues_a_checked_sweep(services, dataset):
    table = tick(tab_sweep.space_rows("lora"), "hyper.learning_rate", low=1e-4, high=1e-2, log=True)
    options = {"n_trials": 6, "parallel": 2, "pruner": "median", "pruner_startup_trials": 1, "max_hours": None}
    request = tab_sweep.make_request(dataset.id, "tiny", "lora", table, options, HYPER)
    assert request.space["hyper.learning_rate"].log and request.hyper.max_steps == 4 and request.n_trials == 6
    line = tab_sweep.submit(services, request, "token-1")
    job = services.jobs.list(kind="sweep")[0]
    assert f"#{job.id}" in line and job.request["space"]["hyper.learning_rate"]["high"] == 1e-2
    assert services.jobs.dispatcher.sent == [job.id]
    assert tab_sweep.job_choices(services)[0][1] == job.id
    with pytest.raises(ValidationFailed, match="variant.r = 4096 is not allowed"):  # the schema's bounds
        bad = tick(tab_sweep.space_rows("lora"), "variant.r", low=4, high=4096)
        tab_sweep.make_request(dataset.id, "tiny", "lora", bad, options, HYPER)
    with pytest.raises(ValidationFailed, match="Dataset: choose a dataset"):
        tab_sweep.make_request(None, "tiny", "lora", table, options, HYPER)


def test_a_sweep_not_started_yet_shows_its_status(services, dataset):
    table = tick(tab_sweep.space_rows("lora"), "variant.r", low=4, high=8)
    request = tab_sweep.make_request(dataset.id, "tiny", "lora", table, {}, HYPER)
    tab_sweep.submit(services, request)
    job = services.jobs.list(kind="sweep")[0]
    view = tab_sweep.sweep_view(services, job.id)
    assert view["history"] is None and view["trials"] == [] and "queued" in view["best"]
    assert tab_sweep.sweep_view(services, None)["best"] == ""


def test_a_finished_sweeps_view_has_optunas_charts_the_trials_and_the_best_adapter(services, dataset, monkeypatch):
    # A study filled by hand (the driver's own runs are tested in tests/sweeps): two complete trials, one pruned.
    import optuna
    import plotly.graph_objects as go

    from studio.sweeps.driver import ADAPTER_ID_ATTR, JOB_ID_ATTR, open_study

    table = tick(tab_sweep.space_rows("lora"), "hyper.learning_rate", low=1e-4, high=1e-2, log=True)
    request = tab_sweep.make_request(dataset.id, "tiny", "lora", table, {"n_trials": 3}, HYPER)
    tab_sweep.submit(services, request)
    job = services.jobs.list(kind="sweep")[0]
    study = open_study(request, services.registry, job.id)
    for number, (value, state) in enumerate([(2.0, "complete"), (1.5, "complete"), (3.0, "pruned")]):
        trial = study.ask({"hyper.learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
        trial.report(value, 1)
        trial.set_user_attr(JOB_ID_ATTR, 100 + number)
        trial.set_user_attr(ADAPTER_ID_ATTR, 200 + number)
        if state == "complete":
            study.tell(trial, value)
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)

    view = tab_sweep.sweep_view(services, job.id)
    assert all(isinstance(view[k], go.Figure) for k in ("history", "parallel", "importances"))
    assert [r["state"] for r in view["trials"]] == ["complete", "complete", "pruned"]
    assert view["best_adapter"] == 201 and "Best: trial 1" in view["best"] and "adapter **#201**" in view["best"]
    assert "2 complete, 1 pruned" in view["best"]


def test_compare_variants_queues_a_comparison_at_the_fixed_budget(services, dataset):
    options = {"parallel": 2, "n_trials": 9, "pruner": "median", "seed": 7}  # trials and pruner follow the variants
    request = tab_sweep.make_compare_request(
        dataset.id, "tiny", ["lora", "dora", "nlora"], "small-model", options, HYPER
    )
    assert request.mode == "compare" and (request.n_trials, request.pruner, request.parallel) == (3, "none", 2)
    assert request.variant_preset == "small-model" and request.seed == 7 and request.hyper.max_steps == 4
    line = tab_sweep.submit(services, request, "token-c")
    job = services.jobs.list(kind="sweep")[0]
    assert f"Queued comparison #{job.id}: lora, dora, nlora" in line
    assert tab_sweep.job_choices(services)[0][0].startswith(f"#{job.id} compare lora, dora, nlora")
    assert tab_sweep.compare_view(services, job.id) == {"visible": False}  # no study yet
    with pytest.raises(ValidationFailed, match="at least two variants"):
        tab_sweep.make_compare_request(dataset.id, "tiny", ["lora"], None, {}, HYPER)
    nothing = tab_sweep.make_compare_request(dataset.id, "tiny", ["lora", "dora"], tab_sweep.NO_PRESET, {}, HYPER)
    assert nothing.variant_preset is None


def test_a_comparisons_view_has_a_row_and_a_line_per_variant_and_a_markdown_download(services, dataset):
    import plotly.graph_objects as go

    from studio.sweeps.driver import JOB_ID_ATTR, open_study

    request = tab_sweep.make_compare_request(dataset.id, "tiny", ["lora", "dora"], None, {}, HYPER)
    tab_sweep.submit(services, request)
    sweep = services.jobs.list(kind="sweep")[0]
    study = open_study(request, services.registry, sweep.id)
    registry = services.registry
    for variant, losses in (("lora", [2.0, 1.5]), ("dora", [2.2, 1.4])):
        trial = study.ask()  # the enqueued points: each variant once
        assert trial.suggest_categorical("variant", ["lora", "dora"]) == variant
        job = registry.create_job(kind="train", request={"variant": variant}, schema_version=1)
        for step, value in zip((2, 4), losses, strict=True):  # as the job's RegistryReporter writes them
            registry.add_metrics(job.id, step, {"loss": value + 0.1, "eval_loss": value})
        timings = {"train_s": 2.0, "steps": 4}
        registry.finish_job(job.id, "succeeded", result={"trainable_params": 100, "steps": 4, "timings": timings})
        trial.set_user_attr(JOB_ID_ATTR, job.id)
        study.tell(trial, losses[-1])

    view = tab_sweep.compare_view(services, sweep.id)
    assert view["visible"] and list(view["table"]["variant"]) == ["`lora`", "`dora`"]
    assert list(view["table"]["eval loss"]) == [1.5, 1.4] and list(view["table"]["s / step"]) == [0.5, 0.5]
    assert isinstance(view["overlay"], go.Figure) and [t.name for t in view["overlay"].data] == ["lora", "dora"]
    markdown = Path(view["markdown_path"]).read_text(encoding="utf-8")
    assert "| `dora` | 100 |" in markdown and "4 steps × batch" in markdown and "svg+xml" in markdown
    plain = tab_sweep.make_request(
        dataset.id, "tiny", "lora", tick(tab_sweep.space_rows("lora"), "variant.r", low=4, high=8), {}, HYPER
    )
    tab_sweep.submit(services, plain)
    assert tab_sweep.compare_view(services, services.jobs.list(kind="sweep")[0].id) == {"visible": False}
