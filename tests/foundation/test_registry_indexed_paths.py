"""The registry's fast paths give the plain queries' answers: indexed name search, loose-scan filter
choices, the stratified scatter sample (SQL seeks and in-Python alike) and the one-session view."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import create_engine, select, text

from models_db import registry as registry_module
from models_db.name_search import FTS_TABLE, SQLITE_TRIGRAM_VERSION
from models_db.registry import Registry
from models_db.tables import AdapterMetricRow, AdapterRow
from studio.schema import AdapterFilters

NAMES = [
    "Chat-Helper",
    "chat_v2",
    "chatxv3",
    "100% sure",
    'say "hi" twice',
    "Ünïcode-LoRA",
    "ünïcode-lora-small",
    "back\\slash",
    "lora-r16-run12",
    "dora-r16-run120",
    "lora-r8-run12",
]
TERMS = ["chat", "CHAT", "chat_", "0%", '"hi"', 'y "h', "Ünï", "ünï", "LORA", "r16-run12", "run12", "k\\s",
         "ch", "x", "#3", "3", "nothing like it", "a-r"]  # fmt: skip
needs_trigram = pytest.mark.skipif(
    sqlite3.sqlite_version_info < SQLITE_TRIGRAM_VERSION, reason="this SQLite has no FTS5 trigram tokenizer"
)


def add(registry, name, variant="lora", **extra):
    fields = dict(name=name, variant=variant, base_model="tiny", path="/nowhere", sha256="0" * 64) | extra
    return registry.add_adapter(**fields)


def plain_search(registry, term):
    """What the search finds without the name index (the LIKE scan decides alone)."""
    registry._name_index_ready = False
    try:
        return registry.page_adapters(search=term, limit=100)
    finally:
        registry._name_index_ready = None


def ids_of(page):
    rows, total = page
    return [r.id for r in rows], total


@needs_trigram
def test_indexed_search_finds_what_the_plain_scan_finds(registry):
    for name in NAMES:
        add(registry, name)
    for term in TERMS:
        assert ids_of(registry.page_adapters(search=term, limit=100)) == ids_of(plain_search(registry, term)), term
    registry.page_adapters(search="chat")
    assert registry._name_index_ready is True  # the index was there and used
    assert {r.name for r in registry.page_adapters(search="r16-run12")[0]} == {"lora-r16-run12", "dora-r16-run120"}


def test_broad_searches_find_the_same_as_narrow_ones(registry, monkeypatch):
    # Above _SHARED_SEARCH_IDS matches the ids are not shared between the view's queries: same answers.
    for i, name in enumerate(NAMES * 3):
        add(registry, name, metrics={"eval_loss": i} if i % 2 else {})
    narrow = {term: registry.adapter_view(search=term, max_points=4) for term in TERMS}
    monkeypatch.setattr(registry_module, "_SHARED_SEARCH_IDS", 2)
    for term in TERMS:
        broad = registry.adapter_view(search=term, max_points=4)
        assert ([r.id for r in broad.rows], broad.total) == ([r.id for r in narrow[term].rows], narrow[term].total)
        assert (broad.points, broad.population) == (narrow[term].points, narrow[term].population), term
    assert narrow["LORA"].total == 12 and len(narrow["LORA"].points) <= 4


@needs_trigram
def test_name_index_follows_inserts_renames_and_deletes(registry):
    first = add(registry, "alpha-one")
    second = add(registry, "beta-two")
    with registry.engine.begin() as conn:
        conn.execute(text("UPDATE adapters SET name = 'gamma-three' WHERE id = :id"), {"id": first.id})
    registry.delete_adapter(second.id)
    registry.bulk_insert(
        "adapters",
        ["id", "name", "variant", "base_model", "ranks", "trainable_params", "size_bytes", "path", "sha256",
         "parents", "metrics", "created_at"],
        [(50, "delta-four", "lora", "tiny", "{}", 1, 1, "p", "s", "[]", "{}", "2026-01-01 00:00:00")],
    )  # fmt: skip
    found = {
        term: [r.name for r in registry.page_adapters(search=term)[0]] for term in ("alpha", "gamma", "beta", "delta")
    }
    assert found == {"alpha": [], "gamma": ["gamma-three"], "beta": [], "delta": ["delta-four"]}
    with registry.engine.connect() as conn:  # the index holds exactly the adapters' names
        indexed = conn.execute(text(f"SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH 'a'")).all()
        assert conn.execute(text(f"SELECT count(*) FROM {FTS_TABLE}_docsize")).scalar() == 2
    assert indexed == []  # one character: not a trigram, matches nothing (the search falls back to LIKE)


@needs_trigram
def test_migration_indexes_the_names_of_existing_adapters(tmp_path):
    from alembic import command

    from models_db.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0005")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO adapters (name, variant, base_model, ranks, trainable_params, size_bytes, path, sha256,"
                " parents, metrics, created_at) VALUES ('older-adapter', 'lora', 'tiny', '{}', 1, 1, 'p', 's', '[]',"
                " '{}', '2026-01-01 00:00:00')"
            )
        )
    engine.dispose()
    registry = Registry.from_url(url)
    try:
        with registry.engine.connect() as conn:
            by_index = conn.execute(text(f"SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH '\"der-ad\"'"))
            assert by_index.scalars().all() == [1]
        assert [r.name for r in registry.page_adapters(search="DER-AD")[0]] == ["older-adapter"]
    finally:
        registry.dispose()
    command.downgrade(alembic_config(url), "0005")
    engine = create_engine(url)
    with engine.connect() as conn:
        left = conn.execute(text("SELECT name FROM sqlite_master WHERE name LIKE 'adapter_names%'")).all()
    engine.dispose()
    assert left == []


def test_search_falls_back_to_the_scan_without_the_triggers(registry):
    add(registry, "kept-in-step")
    with registry.engine.begin() as conn:  # as a later table rebuild would: the index stops following
        conn.execute(text("DROP TRIGGER IF EXISTS adapter_names_insert"))
    registry._name_index_ready = None
    add(registry, "added-after")
    assert [r.name for r in registry.page_adapters(search="added-aft")[0]] == ["added-after"]
    assert registry._name_index_ready is False


def test_filter_choices_equal_distinct(registry):
    from models_db.tables import utcnow

    datasets = [
        registry.add_dataset(
            name=f"d{i}", format="jsonl", rows=1, sha256="0", original_path="x", stored_path="y", created_at=utcnow()
        )
        for i in range(3)
    ]
    for i in range(40):
        add(
            registry,
            f"a{i}",
            variant=("lora", "dora", "vera", "ia3")[i % 4],
            base_model=("b", "a", "c")[i % 3],
            dataset_id=datasets[i % 2].id if i % 5 else None,
            metrics={"eval_loss": 1.0, **({"accuracy": 0.5} if i % 7 == 0 else {}), **({"bleu": 3} if i == 9 else {})},
        )
    with registry.engine.connect() as conn:

        def distinct(column):
            return list(conn.scalars(select(column).where(column.is_not(None)).distinct().order_by(column)))

        expected = {
            "variant": distinct(AdapterRow.variant),
            "base_model": distinct(AdapterRow.base_model),
            "dataset_id": distinct(AdapterRow.dataset_id),
            "metric": distinct(AdapterMetricRow.name),
        }
    assert registry.adapter_filter_choices() == expected
    assert expected["dataset_id"] == [datasets[0].id, datasets[1].id] and expected["metric"][0] == "accuracy"


def test_scatter_sample_is_the_same_by_index_seeks_and_in_python(registry, monkeypatch):
    # Ids with gaps (deleted adapters), a metric on some only, and a variant every 8th id: a
    # stride of 8 would see one variant; the stratified sample must see them all.
    variants = [f"v{i}" for i in range(8)]
    made = [
        add(registry, f"a{i}", variant=variants[i % 8], metrics={"eval_loss": i} if i % 5 else {}) for i in range(1200)
    ]
    for row in made[300:420]:
        registry.delete_adapter(row.id)
    filters = [AdapterFilters(), AdapterFilters(base_model="tiny"), AdapterFilters(variant="v3")]
    for adapter_filters in filters:
        monkeypatch.setattr(registry_module, "_SAMPLE_IN_PYTHON_BELOW", 0)
        by_seeks = registry.adapter_scatter("eval_loss", adapter_filters, max_points=100)
        monkeypatch.setattr(registry_module, "_SAMPLE_IN_PYTHON_BELOW", 10**9)
        in_python = registry.adapter_scatter("eval_loss", adapter_filters, max_points=100)
        assert by_seeks == in_python, adapter_filters
    points, population = registry.adapter_scatter("eval_loss", max_points=100)
    assert population == sum(1 for i in range(1200) if i % 5 and not 300 <= i < 420)
    assert 80 <= len(points) <= 100 and {p[2] for p in points} == set(variants)
    ids = [p[0] for p in points]
    assert ids == sorted(ids, reverse=True) and ids[-1] <= made[20].id and ids[0] >= made[1180].id


def test_view_is_the_page_and_the_scatter_in_one(registry):
    for i in range(60):
        add(registry, f"run-{i}", variant=("lora", "dora")[i % 2], metrics={"eval_loss": i} if i % 3 else {})
    cases = [
        (AdapterFilters(), None, "newest"),
        (AdapterFilters(variant="dora"), None, "name"),
        (AdapterFilters(metric="eval_loss"), None, "metric_asc"),
        (AdapterFilters(), "RUN-1", "oldest"),
        (AdapterFilters(variant="lora"), "#7", "newest"),
        (AdapterFilters(), "nothing", "newest"),
    ]
    for adapter_filters, search, sort in cases:
        view = registry.adapter_view(adapter_filters, search, sort, 5, 10, "eval_loss", 15)
        rows, total = registry.page_adapters(adapter_filters, search, sort, 5, 10)
        assert ([r.id for r in view.rows], view.total) == ([r.id for r in rows], total)
        points, population = registry.adapter_scatter("eval_loss", adapter_filters, search, 15)
        assert (view.points, view.population) == (points, population)
