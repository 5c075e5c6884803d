"""A Playground reply that fails partway leaves no pane on its "…" placeholder.

When the serving queue is full, or an adapter cannot be served, ``stream_panes`` raises after
``send`` has already shown a "…" placeholder in every pane. The status line under the chats
said what happened, but the placeholders stayed forever, reading as a reply still on its way.
Run here as ``bind`` runs the handler (through ``friendly`` with ``errors_to="status"``), on a
fake playground service: no model, no engine.
"""

from __future__ import annotations

from app import tab_playground
from app.ui import friendly
from studio.services.playground import PaneReply
from studio.serving.scheduler import QueueFull


class FailingPlayground:
    """Streams the given replies, then raises ``error`` (as the real service does when a pane fails)."""

    def __init__(self, replies: list[PaneReply], error: Exception):
        self.replies, self.error = replies, error

    def stream_panes(self, base_model, requests, settings, users=None):
        yield from self.replies
        raise self.error


def send_all(playground, panes: int = 3) -> list[dict]:
    """Every update of one "Send to all" with ``panes`` empty panes, as the browser would receive them."""

    def send_to_panes(**raw):
        yield from tab_playground.send(playground, None, **raw)

    raw = {"base_model": "tiny", "panes": panes, "prompt": "hi"}
    raw |= {f"target_{i}": None for i in range(panes)} | {f"chat_{i}": [] for i in range(panes)}
    return list(friendly(send_to_panes, errors_to="status")(**raw))


def final_state(updates: list[dict]) -> dict:
    """What the page shows once the handler ends: each output's last value."""
    state: dict = {}
    for update in updates:
        state |= update
    return state


def last_reply(chat: list[dict]) -> str:
    return chat[-1]["content"]


def test_a_failure_before_any_text_replaces_every_placeholder_with_the_reason():
    full = QueueFull("the serving queue is full (64 requests wait); try again in a moment")
    shown = final_state(send_all(FailingPlayground([], full)))
    for i in range(3):
        assert last_reply(shown[f"chat_{i}"]) == f"⚠ no answer: {full}"
    assert shown["status"] == f"⚠ {full}"


def test_a_failure_partway_keeps_finished_replies_and_marks_the_cut_ones():
    replies = [PaneReply(0, "Hello there.", done=True), PaneReply(1, "Once upon")]
    shown = final_state(send_all(FailingPlayground(replies, QueueFull("the serving queue is full"))))
    assert last_reply(shown["chat_0"]) == "Hello there."  # finished before the failure: left as it is
    assert last_reply(shown["chat_1"]) == "Once upon\n\n⚠ cut short: the serving queue is full"
    assert last_reply(shown["chat_2"]) == "⚠ no answer: the serving queue is full"
    assert shown["status"] == "⚠ the serving queue is full"
    assert all("…" not in last_reply(shown[f"chat_{i}"]) for i in range(3))


def test_an_unexpected_error_still_clears_the_placeholders_and_points_to_the_status_line():
    shown = final_state(send_all(FailingPlayground([], RuntimeError("CUDA out of memory")), panes=2))
    for i in range(2):
        assert last_reply(shown[f"chat_{i}"]) == "⚠ no answer: something went wrong (see below)"
    assert shown["status"].startswith("⚠ Something went wrong (CUDA out of memory)")


class RecordingPlayground:
    """Answers every pane "ok" and keeps the conversations it was sent."""

    def __init__(self):
        self.sent: list = []

    def stream_panes(self, base_model, requests, settings, users=None):
        self.sent = [messages for _, messages in requests]
        for i in range(len(requests)):
            yield PaneReply(i, "ok", done=True)


def test_the_next_message_does_not_send_the_failure_notes_to_the_model():
    replies = [PaneReply(1, "Once upon")]
    shown = final_state(send_all(FailingPlayground(replies, QueueFull("the serving queue is full")), panes=2))
    playground = RecordingPlayground()
    raw = {"base_model": "tiny", "panes": 2, "prompt": "again", "target_0": None, "target_1": None}
    list(tab_playground.send(playground, None, **raw, chat_0=shown["chat_0"], chat_1=shown["chat_1"]))
    # Pane 0 got no answer: its unanswered question is left out; pane 1 keeps its text without the note.
    assert playground.sent[0] == [{"role": "user", "content": "again"}]
    assert playground.sent[1] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Once upon"},
        {"role": "user", "content": "again"},
    ]


class FailingArena:
    """An arena whose battle streams ``replies`` and then raises ``error``."""

    def __init__(self, replies: list[PaneReply], error: Exception):
        self.replies, self.error = replies, error

    def start_battle(self, base_model):
        from studio.services.arena import Battle

        return Battle("b1", base_model, "base", "adapter:1")

    def stream_battle(self, battle, prompt, settings=None):
        yield from self.replies
        raise self.error


def test_an_arena_battle_that_fails_partway_leaves_no_placeholder_and_keeps_voting_closed():
    from app import playground_arena

    full = QueueFull("the serving queue is full")
    arena = FailingArena([PaneReply(0, "Blue", done=True), PaneReply(1, "Re")], full)

    def battle(**raw):
        yield from playground_arena.battle(arena, None, "tiny", "name a colour", **raw)

    shown = final_state(list(friendly(battle, errors_to="reveal")()))
    assert last_reply(shown["chat_a"]) == "Blue"
    assert last_reply(shown["chat_b"]) == "Re\n\n⚠ cut short: the serving queue is full"  # was "Re" then stuck
    assert shown["reveal"] == "⚠ the serving queue is full"
    assert not any(update.get("interactive") for update in shown.values() if isinstance(update, dict))
