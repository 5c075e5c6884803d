"""Compose tab, RecLoRA users: a page number past the last page shows the last page, and says so (never an
empty list under "page 9 of 2")."""

from __future__ import annotations

from types import SimpleNamespace

from app import compose_personalise

USERS = [f"user{i:03d}" for i in range(30)]  # two pages of 25


class FakePersonalised:
    """The two calls user_page makes, over a fixed user list (a bundle's gates need no model here)."""

    def users(self, adapter_id, search="", offset=0, limit=50):
        found = [u for u in USERS if search in u]
        return found[offset : offset + limit], len(found)

    def gates(self, adapter_id, users):
        return [[1.0, 0.0] for _ in users]


SERVICES = SimpleNamespace(personalised=FakePersonalised())


def test_a_page_past_the_last_shows_the_last_page():
    shown = compose_personalise.user_page(SERVICES, 7, "", 9)
    assert shown["users"] == USERS[25:]
    assert shown["page"] == 2
    assert shown["page_info"] == "30 user(s) match · page 2 of 2"


def test_a_page_within_range_is_kept():
    shown = compose_personalise.user_page(SERVICES, 7, "", 1)
    assert shown["users"] == USERS[:25] and shown["page"] == 1
    assert shown["page_info"] == "30 user(s) match · page 1 of 2"
    none = compose_personalise.user_page(SERVICES, 7, "nobody", 3)
    assert none["users"] == [] and none["page"] == 1 and none["page_info"] == "No user matches."
