"""The studio's own sign-in page and logout, in front of Gradio's login (STUDIO_AUTH).

Gradio keeps the sessions: its ``/login`` JSON route (used by gradio_client) and every
protected route work as before. This ASGI middleware only adds what a person sees:

* ``GET /`` without a session redirects to the sign-in page instead of Gradio's bare form;
* ``GET /sign-in`` is a page in the studio's theme with its logo;
* ``POST /sign-in`` checks the password like Gradio does and sets Gradio's own session
  cookies; a wrong one shows the page again with the username kept and a message;
* ``GET /logout`` ends this browser's session and returns to the sign-in page.

URLs are relative, so the studio also works behind a proxy that serves it under a prefix.
"""

from __future__ import annotations

import hmac
import html
import inspect
import secrets
from typing import Any

from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.theme import LOGO_PATH, STATIC_DIR, theme

SIGN_IN_PATH = "/sign-in"
LOGOUT_PATH = "/logout"
WRONG_CREDENTIALS = "wrong username or password"
LOGIN_CSS_PATH = STATIC_DIR / "login.css"


def login_launch_options(auth: list[tuple[str, str]] | None) -> dict[str, Any]:
    """Keyword arguments for ``Blocks.launch``: Gradio's auth plus the studio's sign-in page; nothing without auth."""
    if auth is None:
        return {"auth": None}
    return {"auth": auth, "app_kwargs": {"middleware": [Middleware(LoginGate)]}}


def sign_in_page(username: str = "", error: str = "") -> str:
    """The sign-in page: logo, title, the form (``username`` filled in) and ``error`` next to it."""
    svg = LOGO_PATH.read_text(encoding="utf-8") if LOGO_PATH.is_file() else ""
    # The theme's own CSS variables, so the page matches the studio (and follows its dark mode).
    css = theme()._get_theme_css() + LOGIN_CSS_PATH.read_text(encoding="utf-8")
    message = f"<p class='login-error' id='login-error' role='alert'>{html.escape(error)}</p>" if error else ""
    autofocus = "password" if username else "username"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · Adapter Studio</title>
<style>{css}</style>
</head>
<body>
<main class="login-card">
  <div class="login-brand"><div class="studio-logo">{svg}</div><h1>Adapter Studio</h1></div>
  <p class="login-lead">Sign in to fine-tune, chat with and compare adapters.</p>
  <form method="post" action="sign-in" id="login-form">
    <label for="username">Username</label>
    <input id="username" name="username" autocomplete="username" required value="{html.escape(username)}"
      {"autofocus" if autofocus == "username" else ""}>
    <label for="password">Password</label>
    <input id="password" name="password" type="password" autocomplete="current-password" required
      {"autofocus" if autofocus == "password" else ""}>
    {message}
    <button type="submit" id="login-submit">Sign in</button>
  </form>
</main>
</body>
</html>
"""


class LoginGate:
    """ASGI middleware serving the sign-in page and logout; everything else goes to Gradio unchanged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Starlette puts the application itself in the scope: Gradio's App, which holds the sessions.
        gradio_app = scope.get("app")
        if scope["type"] != "http" or getattr(gradio_app, "auth", None) is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        response = await self._respond(gradio_app, request)
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    async def _respond(self, gradio_app: Any, request: Request) -> Response | None:
        path = _app_path(request.scope)
        method = request.method
        if path == "/" and method in ("GET", "HEAD") and session_user(gradio_app, request) is None:
            return RedirectResponse("sign-in", status_code=303)
        if path == SIGN_IN_PATH and method in ("GET", "HEAD"):
            if session_user(gradio_app, request) is not None:
                return RedirectResponse("./", status_code=303)
            return HTMLResponse(sign_in_page())
        if path == SIGN_IN_PATH and method == "POST":
            return await _sign_in(gradio_app, await request.form())
        if path == LOGOUT_PATH and method == "GET":
            return _log_out(gradio_app, request)
        return None


def session_user(gradio_app: Any, request: Request) -> str | None:
    """The user of this browser's Gradio session, or None when it has none (or it has ended)."""
    for name in _cookie_names(gradio_app):
        user = gradio_app.tokens.get(request.cookies.get(name))
        if user is not None:
            return user
    return None


async def check_credentials(gradio_app: Any, username: str, password: str) -> bool:
    """Whether the pair is accepted by the auth Gradio was launched with (pairs or a function)."""
    auth = gradio_app.auth
    if callable(auth):
        result = auth(username, password)
        return bool(await result if inspect.isawaitable(result) else result)
    expected = auth.get(username)
    # Compare even for an unknown user, so timing does not tell which usernames exist.
    matches = hmac.compare_digest(password.encode(), (expected or secrets.token_hex(8)).encode())
    return matches and expected is not None


async def _sign_in(gradio_app: Any, form: FormData) -> Response:
    username = str(form.get("username") or "").strip()
    password = str(form.get("password") or "")
    if not username or not await check_credentials(gradio_app, username, password):
        return HTMLResponse(sign_in_page(username=username, error=WRONG_CREDENTIALS), status_code=401)
    token = secrets.token_urlsafe(16)
    gradio_app.tokens[token] = username
    response = RedirectResponse("./", status_code=303)
    secure_name, plain_name = _cookie_names(gradio_app)
    # The same two cookies as Gradio's own /login: the secure one for HTTPS (and embedding), the other for plain HTTP.
    response.set_cookie(secure_name, token, httponly=True, samesite="none", secure=True)
    response.set_cookie(plain_name, token, httponly=True)
    return response


def _log_out(gradio_app: Any, request: Request) -> Response:
    # Only this browser's session ends: a shared account stays signed in elsewhere.
    for name in _cookie_names(gradio_app):
        gradio_app.tokens.pop(request.cookies.get(name), None)
    response = RedirectResponse("sign-in", status_code=303)
    for name in _cookie_names(gradio_app):
        response.delete_cookie(name, path="/")
    return response


def _cookie_names(gradio_app: Any) -> tuple[str, str]:
    return f"access-token-{gradio_app.cookie_id}", f"access-token-unsecure-{gradio_app.cookie_id}"


def _app_path(scope: Scope) -> str:
    """The request path inside the app (without a server-side root path)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path
