"""The registry's SQL paging, sampling, downsampling and bulk COPY on PostgreSQL (SQLite: tests/foundation)."""

from __future__ import annotations

import pytest

from models_db.registry import Registry
from studio.schema import AdapterFilters, JobFilters

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def pg_registry(postgres_url):
    registry = Registry.from_url(postgres_url)
    yield registry
    registry.dispose()


def test_pages_choices_scatter_and_curves_on_postgresql(pg_registry):
    registry = pg_registry
    variants = ("lora", "dora", "adalora")
    adapters = [
        (
            i,
            f"Adapter_{i}",
            variants[i % 3],
            "tiny",
            100 + i,
            i,
            "p",
            "s",
            "{}",
            "[]",
            f'{{"eval_loss": {i}}}',
            "2026-01-01 00:00:00+00",
        )
        for i in range(1, 301)
    ]
    columns = [
        "id",
        "name",
        "variant",
        "base_model",
        "trainable_params",
        "size_bytes",
        "path",
        "sha256",
        "ranks",
        "parents",
        "metrics",
        "created_at",
    ]
    assert registry.bulk_insert("adapters", columns, adapters) == 300
    registry.bulk_insert(
        "adapter_metrics", ["adapter_id", "name", "value"], [(i, "eval_loss", float(i)) for i in range(1, 301)]
    )
    registry.refresh_statistics()
    # COPY with explicit ids moved the sequence on: a normal insert gets the next id.
    new = registry.add_adapter(
        name="new", variant="lora", base_model="tiny", path="p", sha256="s", metrics={"eval_loss": 0.5}
    )
    assert new.id == 301

    rows, total = registry.page_adapters(AdapterFilters(variant="dora", metric="eval_loss"), sort="metric_asc", limit=3)
    assert total == 100 and [r.id for r in rows] == [1, 4, 7]
    assert [r.name for r in registry.page_adapters(search="adapter_29")[0]] == [
        "Adapter_299",
        "Adapter_298",
        "Adapter_297",
        "Adapter_296",
        "Adapter_295",
        "Adapter_294",
        "Adapter_293",
        "Adapter_292",
        "Adapter_291",
        "Adapter_290",
        "Adapter_29",
    ]
    assert registry.adapter_filter_choices()["variant"] == sorted(variants)
    points, population = registry.adapter_scatter("eval_loss", max_points=60)
    assert population == 301 and 30 <= len(points) <= 60 and {p[2] for p in points} == set(variants)

    job = registry.create_job(kind="train", name="long run", request={"kind": "train"}, schema_version=1)
    registry.bulk_insert(
        "metrics",
        ["job_id", "step", "name", "value", "elapsed_seconds", "created_at"],
        (
            (job.id, 20 * s, "loss", 100.0 if s == 777 else 1.0 / s, float(s), "2026-01-01 00:00:00+00")
            for s in range(1, 3001)
        ),
    )
    curve = registry.metric_curves(job.id, ["loss"], max_points=100)
    # steps past 32,767: bound small integers must not make the bucket arithmetic smallint
    assert len(curve) <= 100 and curve[0].step == 20 and curve[-1].step == 60_000
    assert max(curve, key=lambda p: p.value).step == 20 * 777
    rows, total = registry.page_jobs(JobFilters(kind="train"), search="LONG")
    assert total == 1 and rows[0].id == job.id


def test_trigram_search_and_seek_sample_equal_the_plain_queries_on_postgresql(pg_registry, monkeypatch):
    from sqlalchemy import text

    from models_db import registry as registry_module
    from models_db.name_search import POSTGRES_INDEX

    registry = pg_registry
    with registry.engine.connect() as conn:
        assert conn.execute(text("SELECT 1 FROM pg_indexes WHERE indexname = :n"), {"n": POSTGRES_INDEX}).scalar()
    names = ["Chat-Helper", "chat_v2", "100% sure", 'say "hi"', "Ünïcode-LoRA", "lora-r16-run12", "dora-r16-run120"]
    for i, name in enumerate(names * 30):
        registry.add_adapter(
            name=f"{name}-{i}", variant=f"v{i % 8}", base_model="tiny", path="p", sha256="s", metrics={"eval_loss": i}
        )
    with registry.engine.connect() as conn:
        for term in ["chat", "CHAT", "chat_", "0%", '"hi"', "ünï", "r16-run12", "ch", "#3", "nothing"]:
            found = registry.page_adapters(search=term, limit=500)
            pattern = "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            # The same rows as a scan with the index switched off.
            conn.execute(text("SET enable_bitmapscan = off"))
            conn.execute(text("SET enable_indexscan = off"))
            plain = conn.execute(
                text("SELECT id FROM adapters WHERE name ILIKE :p OR CAST(id AS TEXT) = :d ORDER BY id DESC"),
                {"p": pattern, "d": term.removeprefix("#")},
            ).scalars()
            assert [r.id for r in found[0]] == list(plain) and found[1] == len(found[0]), term
    for adapter_filters in (AdapterFilters(), AdapterFilters(variant="v3")):
        monkeypatch.setattr(registry_module, "_SAMPLE_IN_PYTHON_BELOW", 0)
        by_seeks = registry.adapter_scatter("eval_loss", adapter_filters, max_points=20)
        monkeypatch.setattr(registry_module, "_SAMPLE_IN_PYTHON_BELOW", 10**9)
        assert by_seeks == registry.adapter_scatter("eval_loss", adapter_filters, max_points=20)
    # two strata may reach the same adapter: at most 20 points, each one of v3's 26
    assert {p[2] for p in by_seeks[0]} == {"v3"} and 15 <= len(by_seeks[0]) <= 20 and by_seeks[1] == 26
