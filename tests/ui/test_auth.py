"""STUDIO_AUTH: optional login for shared deployments."""

from __future__ import annotations

import pytest

from app.auth import parse_auth
from studio.errors import ConfigurationError


def test_no_auth_means_no_login():
    assert parse_auth(None) is None and parse_auth("") is None


def test_inline_pairs_and_file(tmp_path):
    assert parse_auth("alice:s3cret,bob:pa:ss") == [("alice", "s3cret"), ("bob", "pa:ss")]
    users = tmp_path / "users.txt"
    users.write_text("# team\nalice:one\n\ncarol:two\n")
    assert parse_auth(str(users)) == [("alice", "one"), ("carol", "two")]


@pytest.mark.parametrize("bad", ["alice", ":nopass", "alice:", "a:b,broken"])
def test_malformed_auth_is_a_configuration_error(bad):
    with pytest.raises(ConfigurationError, match="STUDIO_AUTH"):
        parse_auth(bad)


def test_launched_app_requires_login(settings, registry):
    """With auth set, the page asks for a login and the API refuses anonymous calls."""
    import httpx

    from app.main import build_app
    from studio.services.container import Services
    from studio.services.jobs import JobService

    class NoQueue:
        def send(self, job_id):
            return "t"

        def revoke(self, task_id):
            pass

    demo = build_app(Services(settings=settings, registry=registry, jobs=JobService(registry, NoQueue())))
    _, url, _ = demo.launch(prevent_thread_lock=True, auth=[("alice", "pw")], server_port=None, quiet=True)
    try:
        assert httpx.get(f"{url}config", timeout=10).status_code in (401, 403)
        ok = httpx.post(f"{url}login", data={"username": "alice", "password": "pw"}, timeout=10)
        assert ok.status_code == 200
        bad = httpx.post(f"{url}login", data={"username": "alice", "password": "wrong"}, timeout=10)
        assert bad.status_code in (400, 401)
    finally:
        demo.close()
