"""Federated tab: it builds, the preview shows each client's label mix, a submit queues the job, charts follow rounds."""

from __future__ import annotations

import json

import pytest

from app import tab_federated
from studio.errors import ValidationFailed


@pytest.fixture
def dataset(services, tmp_path):
    from studio.services.datasets import DatasetService

    rows = [
        {"instruction": f"what color is item {i}", "output": f"colour {i % 3}", "label": "warm" if i % 3 else "cool"}
        for i in range(30)
    ]
    path = tmp_path / "colours.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return DatasetService(services.registry, services.settings).add(path)


def options(**extra):
    return {"strategy": "ffa", "clients": 3, "split": "dirichlet", "alpha": 0.5, "rounds": 2, **extra}


def test_the_tab_is_in_the_app_and_builds(services):
    import gradio as gr

    from app.main import build_app, tab_modules

    assert tab_federated.available() and tab_federated in tab_modules()
    app = build_app(services)
    assert isinstance(app, gr.Blocks)
    ids = {getattr(block, "elem_id", None) for block in app.blocks.values()}
    assert {"federated-preview", "federated-submit", "federated-mix", "federated-loss"} <= ids


def test_preview_returns_the_client_mix_chart(services, dataset):
    request = tab_federated.make_request(dataset.id, "tiny", options(), None)
    chart, text = tab_federated.preview(services, request)
    assert [trace.name for trace in chart.data] == ["cool", "warm"]
    assert list(chart.data[0].x) == ["client 1", "client 2", "client 3"]
    rows = sum(sum(trace.y) for trace in chart.data)
    assert rows == 24 and "6 rows held out" in text  # 30 rows, 0.2 held out


def test_form_refusals_are_plain(services, dataset):
    with pytest.raises(ValidationFailed, match="Dataset: choose a dataset"):
        tab_federated.make_request(None, "tiny", options(), None)
    with pytest.raises(ValidationFailed, match="at least 2 clients"):
        tab_federated.make_request(dataset.id, "tiny", options(clients=1), None)
    assert tab_federated.privacy_block(None, "", 1.0, 1e-5) is None
    assert tab_federated.privacy_block(1.1, None, 0.5, 1e-5)["noise_multiplier"] == 1.1


def test_submit_queues_and_the_charts_follow_the_rounds(services, dataset):
    request = tab_federated.make_request(dataset.id, "tiny", options(), tab_federated.privacy_block(1.0, None, 1, 1e-5))
    line = tab_federated.submit(services, request)
    [job] = services.jobs.list(kind="federated")
    assert line.startswith(f"Queued federated job #{job.id} (ffa, 3 clients, 2 rounds with DP-SGD)")
    assert tab_federated.job_choices(services)[0][1] == job.id
    for step, (val, c1, eps) in enumerate([(3.0, None, 0.0), (2.5, 2.7, 0.8), (2.1, 2.2, 1.3)]):
        values = {"val_loss": val, "epsilon": eps, "bytes_up": 100.0 * step, "bytes_down": 200.0}
        if c1 is not None:
            values["client_1_loss"] = c1
        services.registry.add_metrics(job.id, step, values)  # as the job's RegistryReporter writes them
    charts = tab_federated.job_charts(services, job.id)
    names = [trace.name for trace in charts["loss"].data]
    assert names == ["global validation loss", "client 1 local loss"]
    assert list(charts["loss"].data[0].y) == [3.0, 2.5, 2.1]
    assert list(charts["epsilon"].data[0].y) == [0.0, 0.8, 1.3]
    assert [trace.name for trace in charts["bytes"].data] == ["clients → server", "server → clients"]


def test_the_job_pickers_labels_follow_each_jobs_status_on_the_timer(services, dataset):
    """The labels carry the status ("· queued"); the timer reads them again (they stayed what they were at submit)."""
    from app.main import build_app

    app = build_app(services)
    ticks = {
        getattr(out, "elem_id", None): fn
        for fn in app.fns.values()
        if fn.name == "refreshed_jobs"
        for out in fn.outputs
    }
    assert {"federated-job", "sweep-job"} <= set(ticks)  # both tabs' pickers
    tab_federated.submit(services, tab_federated.make_request(dataset.id, "tiny", options(), None))
    [job] = services.jobs.list(kind="federated")
    services.jobs.cancel(job.id)
    [update] = ticks["federated-job"].fn().values()
    assert update["choices"] == [(f"#{job.id} ffa · cancelled", job.id)] and "value" not in update
