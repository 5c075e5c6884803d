"""The playground's blind Arena on a tiny random Llama: hidden names until the vote, one vote per battle, a board."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import gradio as gr
import pytest

from app import playground_arena
from studio.errors import ValidationFailed
from studio.services.arena import ArenaService, Battle
from studio.services.playground import PlaygroundService

FAST = {"max_new_tokens": 6, "temperature": 0.0, "repetition_penalty": 1.0}


class Gen:
    """Stands in for the playground's SchemaForm of generation settings."""

    names = list(FAST)

    def values(self, raw):
        return dict(zip(self.names, raw, strict=True))


GEN_RAW = {f"gen.{k}": v for k, v in FAST.items()}


@pytest.fixture
def playground(registry, settings):
    service = PlaygroundService(registry, settings)
    yield service
    service.schedulers.close()


@pytest.fixture
def arena_setup(playground, registry, tiny_llama, tiny_loras):
    base = str(tiny_llama)
    adapters = [
        registry.add_adapter(name=f"secret-name-{i}", variant="lora", base_model=base, path=str(p), sha256="0" * 64)
        for i, p in enumerate(tiny_loras)
    ]
    return ArenaService(playground, rng=random.Random(0)), base, adapters


def visible(outputs: list[dict]) -> str:
    """Everything the handler sent to components the browser sees (the battle state stays on the server)."""
    return json.dumps([{k: v for k, v in out.items() if k != "battle"} for out in outputs], default=str)


def run_battle(arena, base, prompt="name a colour"):
    return list(playground_arena.battle(arena, Gen(), base, prompt, **GEN_RAW))


def test_battle_hides_the_names_until_the_vote_then_reveals_them(arena_setup):
    arena, base, adapters = arena_setup
    outputs = run_battle(arena, base)
    battle: Battle = outputs[0]["battle"]
    assert battle.target_a != battle.target_b
    text = visible(outputs)
    for secret in ["adapter:", base, "no adapter", *(a.name for a in adapters), *(f"#{a.id}" for a in adapters)]:
        assert secret not in text, secret
    # Voting is closed while the replies stream, open once both are complete.
    assert outputs[0]["vote_a"]["interactive"] is False
    assert outputs[-1]["vote_a"]["interactive"] is True and outputs[-1]["vote_tie"]["interactive"] is True
    assert battle.finished and battle.prompt == "name a colour"
    streamed = [o for o in outputs[1:-1] if "chat_a" in o or "chat_b" in o]
    assert {"chat_a", "chat_b"} <= {k for o in streamed for k in o}

    out = playground_arena.vote(arena, battle, "b")
    labels = arena.labels(base, [battle.target_a, battle.target_b])
    assert labels[battle.target_a] in out["reveal"] and labels[battle.target_b] in out["reveal"]
    assert "Model B" in out["reveal"] and out["vote_b"]["interactive"] is False
    rows = out["board"]
    assert {row[1] for row in rows} == set(labels.values()) and all(row[4] == 1 for row in rows)
    winner = labels[battle.target_b]
    assert rows[0][1] == winner and rows[0][2] > rows[1][2]  # the preferred one ranks first
    assert len(out["board_chart"].data) == 1


def test_one_vote_per_battle(arena_setup, registry):
    arena, base, _ = arena_setup
    battle = run_battle(arena, base)[0]["battle"]
    playground_arena.vote(arena, battle, "a", playground_arena.voter_name(SimpleNamespace(username="ann")))
    with pytest.raises(ValidationFailed, match="already voted"):
        arena.vote(battle, "b")
    # A stale copy of the battle (another browser tab, another process) is refused by the registry.
    stale = Battle(battle.id, battle.base_model, battle.target_a, battle.target_b, battle.prompt, {0, 1})
    with pytest.raises(ValidationFailed, match="already voted"):
        arena.vote(stale, "tie")
    assert [(v.winner, v.voter) for v in registry.votes_for_base(base)] == [("a", "ann")]
    assert playground_arena.voter_name(SimpleNamespace(username=None)) is None


def test_no_vote_before_both_replies_end_and_one_prompt_per_battle(arena_setup, registry):
    arena, base, _ = arena_setup
    battle = arena.start_battle(base)
    with pytest.raises(ValidationFailed, match="both replies"):
        arena.vote(battle, "a")
    with pytest.raises(ValidationFailed, match="vote first"):
        arena.reveal(battle)
    stream = arena.stream_battle(battle, "hello")
    next(stream)
    stream.close()  # the user left mid-reply
    with pytest.raises(ValidationFailed, match="both replies"):
        arena.vote(battle, "a")
    with pytest.raises(ValidationFailed, match="new battle"):
        list(arena.stream_battle(battle, "again"))
    with pytest.raises(gr.Error, match="Start a battle"):
        playground_arena.vote(arena, None, "a")
    assert registry.votes_for_base(base) == []


def test_battles_draw_every_contestant_including_the_base(arena_setup):
    arena, base, adapters = arena_setup
    seen = set()
    for _ in range(30):
        battle = arena.start_battle(base)
        seen |= {battle.target_a, battle.target_b}
    assert seen == {"base", *(f"adapter:{a.id}" for a in adapters)}


def test_arena_needs_an_adapter_besides_the_base(playground):
    with pytest.raises(ValidationFailed, match="train one first"):
        ArenaService(playground).start_battle("a-base-without-adapters")


def test_a_deleted_adapters_votes_keep_the_board_working(arena_setup, registry):
    from studio.schema import ArenaVote

    arena, base, adapters = arena_setup
    gone, kept = adapters
    for i, (a, winner) in enumerate([(gone, "a"), (gone, "a"), (kept, "b"), (kept, "tie")]):
        registry.record_vote(
            ArenaVote(battle_id=f"battle-{i:04d}", base_model=base, target_a=f"adapter:{a.id}", target_b="base",
                      winner=winner)
        )  # fmt: skip
    registry.delete_adapter(gone.id)
    out = playground_arena.board(arena, base)
    names = [row[1] for row in out["board"]]
    assert names[0] == f"#{gone.id} (deleted)"
    assert set(names) == {f"#{gone.id} (deleted)", f"#{kept.id} {kept.name}", f"{base} (no adapter)"}
    empty = playground_arena.board(arena, "nothing-voted")
    assert empty["board"] == [] and "No votes yet" in empty["board_chart"].layout.annotations[0].text
