"""Paging, searching, filter choices, scatter samples and downsampled curves done in SQL by the registry."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import create_engine, text

from models_db.registry import Registry
from studio.errors import ValidationFailed
from studio.schema import AdapterFilters, JobFilters

VARIANTS = ("lora", "dora", "adalora")


def add_adapter(registry, index: int, **extra):
    fields = (
        dict(
            name=f"adapter-{index}",
            variant=VARIANTS[index % 3],
            base_model="tiny" if index % 2 else "small",
            dataset_id=None,
            trainable_params=1000 + index,
            size_bytes=10 * index,
            path=f"/nowhere/{index}",
            sha256="0" * 64,
            metrics={"eval_loss": 5.0 - index / 10},
        )
        | extra
    )
    return registry.add_adapter(**fields)


def add_job(registry, **extra):
    return registry.create_job(**(dict(kind="check", request={"kind": "check"}, schema_version=1, seed=0) | extra))


def test_adapter_pages_filter_search_sort_and_count(registry):
    for i in range(1, 13):
        add_adapter(registry, i)
    rows, total = registry.page_adapters(limit=5)
    assert total == 12 and [r.id for r in rows] == [12, 11, 10, 9, 8]
    rows, total = registry.page_adapters(offset=10, limit=5)
    assert total == 12 and [r.id for r in rows] == [2, 1]

    rows, total = registry.page_adapters(AdapterFilters(variant="dora", base_model="tiny"), limit=50)
    assert {(r.variant, r.base_model) for r in rows} == {("dora", "tiny")}
    assert total == len(rows) == sum(1 for i in range(1, 13) if i % 3 == 1 and i % 2)

    rows, _ = registry.page_adapters(sort="params", limit=3)
    assert [r.trainable_params for r in rows] == [1012, 1011, 1010]
    rows, _ = registry.page_adapters(sort="oldest", limit=2)
    assert [r.id for r in rows] == [1, 2]


def test_search_matches_names_in_any_case_ids_and_literal_wildcards(registry):
    add_adapter(registry, 1, name="Chat-Helper")
    add_adapter(registry, 2, name="chat_v2")
    add_adapter(registry, 3, name="chatxv3")
    add_adapter(registry, 4, name="100% sure")
    assert {r.name for r in registry.page_adapters(search="CHAT")[0]} == {"Chat-Helper", "chat_v2", "chatxv3"}
    # "_" and "%" are searched for literally, not as LIKE wildcards
    assert [r.name for r in registry.page_adapters(search="chat_")[0]] == ["chat_v2"]
    assert [r.name for r in registry.page_adapters(search="0%")[0]] == ["100% sure"]
    assert [r.id for r in registry.page_adapters(search="#3")[0]] == [3]
    assert registry.page_adapters(search="nothing like it") == ([], 0)


def test_metric_filter_and_sort_follow_metric_updates_and_deletes(registry):
    a = add_adapter(registry, 1, metrics={"eval_loss": 2.0, "note": "text", "ok": True})
    b = add_adapter(registry, 2, metrics={})
    c = add_adapter(registry, 3, metrics={"eval_loss": 1.0})
    rows, total = registry.page_adapters(AdapterFilters(metric="eval_loss"), sort="metric_asc")
    assert (total, [r.id for r in rows]) == (2, [c.id, a.id])

    registry.update_adapter_metrics(b.id, {"eval_loss": 0.5, "accuracy": 0.9})
    registry.update_adapter_metrics(a.id, {"eval_loss": 3.0})
    rows, _ = registry.page_adapters(AdapterFilters(metric="eval_loss"), sort="metric_desc")
    assert [r.id for r in rows] == [a.id, c.id, b.id]
    assert registry.adapter_filter_choices()["metric"] == ["accuracy", "eval_loss"]  # no text, no booleans

    registry.delete_adapter(a.id)
    assert [r.id for r in registry.page_adapters(AdapterFilters(metric="eval_loss"))[0]] == [c.id, b.id]
    with pytest.raises(ValidationFailed, match="Metric filter"):
        registry.page_adapters(sort="metric_asc")
    with pytest.raises(ValidationFailed, match="unknown adapter sort"):
        registry.page_adapters(sort="colour")


def test_filter_choices_are_distinct_values(registry, settings):
    from models_db.tables import utcnow

    dataset = registry.add_dataset(
        name="d", format="jsonl", rows=1, sha256="0", original_path="x", stored_path="y", created_at=utcnow()
    )
    for i in range(1, 7):
        add_adapter(registry, i, dataset_id=dataset.id if i % 2 else None)
    choices = registry.adapter_filter_choices()
    assert choices == {
        "variant": sorted(VARIANTS),
        "base_model": ["small", "tiny"],
        "dataset_id": [dataset.id],
        "metric": ["eval_loss"],
    }


def test_scatter_samples_evenly_and_the_same_points_every_time(registry):
    # Every third adapter is one variant: a sample of `id % k == 0` would see one variant only.
    for i in range(1, 301):
        add_adapter(registry, i)
    points, population = registry.adapter_scatter("eval_loss", max_points=60)
    assert population == 300
    assert 30 <= len(points) <= 60
    assert {p[2] for p in points} == set(VARIANTS)
    ids = sorted(p[0] for p in points)
    assert ids[0] <= 30 and ids[-1] >= 270  # spread over the whole id range, not the newest 60
    assert registry.adapter_scatter("eval_loss", max_points=60)[0] == points
    small, population = registry.adapter_scatter("eval_loss", AdapterFilters(variant="lora"), max_points=500)
    assert population == 100 and len(small) == 100 and {p[2] for p in small} == {"lora"}


def test_job_pages_filter_by_status_kind_and_search(registry):
    jobs = [add_job(registry, name=f"run {i}", kind="train" if i % 2 else "check") for i in range(1, 9)]
    registry.request_cancel(jobs[0].id)
    rows, total = registry.page_jobs(limit=3)
    assert total == 8 and [j.id for j in rows] == [8, 7, 6]
    rows, total = registry.page_jobs(JobFilters(status=["cancelled"]))
    assert (total, [j.id for j in rows]) == (1, [jobs[0].id])
    rows, total = registry.page_jobs(JobFilters(kind="train", status=["queued"]))
    assert [j.id for j in rows] == [7, 5, 3]
    assert [j.id for j in registry.page_jobs(search="RUN 4")[0]] == [4]


def test_short_curves_come_back_whole(registry):
    job = add_job(registry)
    for step in range(1, 11):
        registry.add_metrics(job.id, step, {"loss": 10.0 - step, "eval_loss": 1.0}, elapsed_seconds=step * 2.0)
    points = registry.metric_curves(job.id, ["loss"])
    assert [(p.step, p.value, p.elapsed_seconds) for p in points] == [(s, 10.0 - s, s * 2.0) for s in range(1, 11)]
    assert {p.name for p in registry.metric_curves(job.id)} == {"loss", "eval_loss"}


def test_long_curves_keep_ends_and_extremes_within_the_point_budget(registry):
    job = add_job(registry)
    steps = 5000
    values = {step: 5.0 * math.exp(-step / 1000) + 0.1 * math.sin(step) for step in range(1, steps + 1)}
    values[3333] = 50.0  # a spike, and a dip, that a plain stride would miss
    values[1234] = -7.0
    registry.bulk_insert(
        "metrics",
        ["job_id", "step", "name", "value", "elapsed_seconds", "created_at"],
        ((job.id, step, "loss", value, step * 0.5, "2026-01-01 00:00:00") for step, value in values.items()),
    )
    points = registry.metric_curves(job.id, ["loss"], max_points=200)
    assert 150 <= len(points) <= 200
    assert [p.step for p in points] == sorted(p.step for p in points)
    assert (points[0].step, points[-1].step) == (1, steps)
    assert max(points, key=lambda p: p.value).step == 3333
    assert min(points, key=lambda p: p.value).step == 1234
    assert all(p.value == values[p.step] and p.elapsed_seconds == p.step * 0.5 for p in points)


def test_bulk_insert_refuses_unknown_tables_and_columns(registry):
    with pytest.raises(ValidationFailed, match="unknown registry table"):
        registry.bulk_insert("users", ["id"], [])
    with pytest.raises(ValidationFailed, match="no column"):
        registry.bulk_insert("metrics", ["colour"], [])


def test_migration_backfills_adapter_metrics_of_existing_adapters(tmp_path):
    from alembic import command

    from models_db.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0001")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO adapters (name, variant, base_model, ranks, trainable_params, size_bytes, path, sha256,"
                " parents, metrics, created_at) VALUES ('old', 'lora', 'tiny', '{}', 1, 1, 'p', 's', '[]',"
                ' \'{"eval_loss": 1.5, "note": "x"}\', \'2026-01-01 00:00:00\')'
            )
        )
    engine.dispose()
    registry = Registry.from_url(url)
    try:
        rows, total = registry.page_adapters(AdapterFilters(metric="eval_loss"))
        assert total == 1 and rows[0].name == "old"
        assert registry.adapter_filter_choices()["metric"] == ["eval_loss"]
    finally:
        registry.dispose()
