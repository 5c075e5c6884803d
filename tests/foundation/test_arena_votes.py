"""Arena votes in the registry on SQLite: persisted, one per battle, per base, and the 0007 migration both ways."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect

from models_db.registry import Registry
from studio.schema import ARENA_PROMPT_CHARS, ArenaVote


def vote(battle: str, a: str = "base", b: str = "adapter:1", winner: str = "a", base: str = "tiny", **kw) -> ArenaVote:
    return ArenaVote(battle_id=battle, base_model=base, target_a=a, target_b=b, winner=winner, **kw)


def test_votes_persist_and_are_listed_per_base(settings):
    registry = Registry.from_url(settings.database_url)
    first = registry.record_vote(vote("battle-0001", prompt="hi", voter="ann"))
    registry.record_vote(vote("battle-0002", a="adapter:1", b="base", winner="tie"))
    registry.record_vote(vote("battle-0003", base="other-base"))
    registry.dispose()

    reopened = Registry.from_url(settings.database_url)  # a new process sees them
    try:
        rows = reopened.votes_for_base("tiny")
        assert [(r.battle_id, r.target_a, r.target_b, r.winner) for r in rows] == [
            ("battle-0001", "base", "adapter:1", "a"),
            ("battle-0002", "adapter:1", "base", "tie"),
        ]
        assert rows[0].id == first.id and rows[0].prompt == "hi" and rows[0].voter == "ann"
        assert rows[0].created_at.tzinfo is not None
        assert [r.battle_id for r in reopened.votes_for_base("other-base")] == ["battle-0003"]
        assert reopened.votes_for_base("nobody") == []
    finally:
        reopened.dispose()


def test_a_battle_is_voted_on_once(registry):
    assert registry.record_vote(vote("battle-once", winner="a")) is not None
    assert registry.record_vote(vote("battle-once", winner="b")) is None
    assert [r.winner for r in registry.votes_for_base("tiny")] == ["a"]


def test_vote_schema_truncates_the_prompt_and_refuses_bad_votes():
    long = vote("battle-long", prompt="x" * (ARENA_PROMPT_CHARS * 3))
    assert len(long.prompt) == ARENA_PROMPT_CHARS and long.prompt.endswith("…")
    for bad in (dict(winner="left"), dict(a="adapter:1", b="adapter:1"), dict(a="adapter:x"), dict(a="adapter:0")):
        with pytest.raises(ValueError):
            vote("battle-bad", **bad)


def test_adapter_names_skip_deleted_adapters(registry):
    kept = registry.add_adapter(name="kept", variant="lora", base_model="tiny", path="p", sha256="0" * 64)
    gone = registry.add_adapter(name="gone", variant="lora", base_model="tiny", path="q", sha256="0" * 64)
    registry.record_vote(vote("battle-del", a=f"adapter:{gone.id}", b="base"))
    registry.delete_adapter(gone.id)
    assert registry.adapter_names([kept.id, gone.id, 999]) == {kept.id: "kept"}
    assert registry.adapter_names([]) == {}
    assert [r.target_a for r in registry.votes_for_base("tiny")] == [f"adapter:{gone.id}"]  # the vote stays


def test_migration_0007_upgrades_and_downgrades(tmp_path):
    from alembic import command

    from models_db.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'arena.db'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "0006")
    engine = create_engine(url)
    assert "arena_votes" not in inspect(engine).get_table_names()
    command.upgrade(cfg, "0007")
    columns = {c["name"] for c in inspect(engine).get_columns("arena_votes")}
    assert {"battle_id", "base_model", "target_a", "target_b", "prompt", "winner", "voter", "created_at"} <= columns
    engine.dispose()
    registry = Registry.from_url(url)
    try:
        registry.record_vote(vote("battle-mig"))
        assert len(registry.votes_for_base("tiny")) == 1
    finally:
        registry.dispose()
    command.downgrade(cfg, "0006")
    engine = create_engine(url)
    assert "arena_votes" not in inspect(engine).get_table_names()
    engine.dispose()
