"""The studio's own sign-in page and logout (app/login.py) on a launched app with STUDIO_AUTH."""

from __future__ import annotations

import asyncio
import html
import re
import socket
from types import SimpleNamespace

import httpx
import pytest

from app.login import WRONG_CREDENTIALS, check_credentials, login_launch_options
from app.theme import LOGO_PATH, header_html, theme
from ui.shared_services import module_services


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """The studio launched like `studio run` does with STUDIO_AUTH=alice:pw,bob:pw2; its base URL.

    One launch for the module: each test signs in with clients (cookie jars) of its own, and a
    logout ends only the session it belongs to."""
    from app.auth import parse_auth
    from app.main import build_app
    from app.theme import launch_options

    with module_services(tmp_path_factory.mktemp("login"), auth="alice:pw,bob:pw2") as services:
        demo = build_app(services)
        port = free_port()
        demo.queue().launch(
            server_name="127.0.0.1",
            server_port=port,
            prevent_thread_lock=True,
            quiet=True,
            **login_launch_options(parse_auth(services.settings.auth)),
            **launch_options(),
        )
        yield f"http://127.0.0.1:{port}/"
        demo.close()


def sign_in(client: httpx.Client, username: str, password: str) -> httpx.Response:
    return client.post("sign-in", data={"username": username, "password": password})


def test_root_redirects_to_a_sign_in_page_in_the_studio_theme(studio):
    with httpx.Client(base_url=studio, timeout=30) as client:
        root = client.get("")
        assert root.status_code == 303 and root.headers["location"] == "sign-in"
        page = client.get("sign-in")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>Sign in · Adapter Studio</title>" in page.text and "<h1>Adapter Studio</h1>" in page.text
    assert LOGO_PATH.read_text(encoding="utf-8") in page.text
    assert theme()._get_theme_css() in page.text  # the studio's colours, not Gradio's default page
    assert 'name="username"' in page.text and 'name="password" type="password"' in page.text
    assert WRONG_CREDENTIALS not in page.text


@pytest.mark.parametrize(("username", "password"), [("alice", "wrong"), ("alice", "pw2"), ("<carol>", "pw")])
def test_wrong_password_keeps_the_username_and_says_so(studio, username, password):
    with httpx.Client(base_url=studio, timeout=30) as client:
        answer = sign_in(client, username, password)
        assert answer.status_code == 401
        assert f'value="{html.escape(username)}"' in answer.text  # kept, and escaped
        assert f"id='login-error' role='alert'>{WRONG_CREDENTIALS}</p>" in answer.text
        password_input = re.search(r'<input id="password"[^>]*>', answer.text).group(0)
        assert "value=" not in password_input  # the password is never sent back
        assert not client.cookies
        assert client.get("config").status_code == 401


def test_right_password_opens_the_studio_with_a_logout_button(studio):
    with httpx.Client(base_url=studio, timeout=30) as client:
        answer = sign_in(client, "alice", "pw")
        assert answer.status_code == 303 and answer.headers["location"] == "./"
        assert client.get("").status_code == 200
        config = client.get("config")
        assert config.status_code == 200
        elem_ids = {c.get("props", {}).get("elem_id") for c in config.json()["components"]}
        assert {"studio-tabs", "studio-header"} <= elem_ids
        assert "href='logout'>Log out</a>" in config.text
        assert client.get("gradio_api/user").json() == "alice"
        # Signed in, the sign-in page sends the user on to the studio.
        again = client.get("sign-in")
        assert again.status_code == 303 and again.headers["location"] == "./"


def test_logout_ends_the_session_and_returns_to_the_sign_in_page(studio):
    with httpx.Client(base_url=studio, timeout=30) as client:
        sign_in(client, "alice", "pw")
        stolen = dict(client.cookies)
        other_browser = httpx.Client(base_url=studio, timeout=30)
        sign_in(other_browser, "alice", "pw")

        out = client.get("logout")
        assert out.status_code == 303 and out.headers["location"] == "sign-in"
        assert not client.cookies
        assert client.get("config").status_code == 401
        assert client.get("").headers["location"] == "sign-in"
        # The old cookie is dead on the server too, not only forgotten by the browser.
        replay = httpx.get(studio + "config", cookies=stolen, timeout=30)
        assert replay.status_code == 401
        # Only this browser's session ended: the same account elsewhere stays signed in.
        assert other_browser.get("config").status_code == 200
        other_browser.close()


def test_protected_routes_refuse_without_a_session(studio):
    with httpx.Client(base_url=studio, timeout=30) as client:
        assert client.get("config").status_code == 401
        assert client.get("gradio_api/info").status_code == 401
        assert client.post("gradio_api/queue/join", json={}).status_code == 401
        assert client.get(f"gradio_api/file={LOGO_PATH}").status_code in (401, 403)
        assert client.get("gradio_api/user").json() is None
        # A made-up cookie is no session either.
        assert client.get("config", cookies={"access-token-unsecure-x": "guess"}).status_code == 401
        # gradio_client's JSON login is still Gradio's own.
        assert client.post("login", data={"username": "bob", "password": "pw2"}).json() == {"success": True}


def test_without_auth_there_is_no_sign_in_and_no_logout_button():
    assert login_launch_options(None) == {"auth": None}
    assert "studio-logout" not in header_html() and "studio-logout" in header_html(logout=True)


def test_check_credentials_accepts_pairs_and_functions():
    pairs = SimpleNamespace(auth={"alice": "pw"})
    assert asyncio.run(check_credentials(pairs, "alice", "pw"))
    assert not asyncio.run(check_credentials(pairs, "alice", "PW"))
    assert not asyncio.run(check_credentials(pairs, "mallory", "pw"))

    async def only_bob(username, password):
        return username == "bob" and password == "x"

    assert asyncio.run(check_credentials(SimpleNamespace(auth=only_bob), "bob", "x"))
    assert not asyncio.run(check_credentials(SimpleNamespace(auth=lambda u, p: False), "bob", "x"))
