"""STUDIO_AUTH in a real browser: the studio's sign-in page, a wrong then a right password, Log out.

Runs `studio run` (without a worker: nothing is trained) the same way as test_studio_browser.py.
"""

from __future__ import annotations

import pytest

from app.login import WRONG_CREDENTIALS
from e2e.test_studio_browser import browser, studio_process, workspace  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def guarded_url(workspace):  # noqa: F811 - the imported fixture
    with studio_process(workspace, STUDIO_AUTH="alice:s3cret", STUDIO_EMBEDDED_WORKER="false") as url:
        yield url


def test_sign_in_then_log_out(guarded_url, browser):  # noqa: F811 - the imported fixture
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(guarded_url, wait_until="load")
    page.wait_for_url("**/sign-in")
    assert page.title() == "Sign in · Adapter Studio"
    assert page.locator(".login-brand svg").is_visible()

    page.fill("#username", "alice")
    page.fill("#password", "wrong")
    page.click("#login-submit")
    assert page.locator("#login-error").inner_text() == WRONG_CREDENTIALS
    assert page.input_value("#username") == "alice" and page.input_value("#password") == ""

    page.fill("#password", "s3cret")
    page.click("#login-submit")
    page.wait_for_selector("#studio-tabs")
    logout = page.locator("#studio-logout")
    assert logout.is_visible()

    logout.click()
    page.wait_for_url("**/sign-in")
    assert page.locator("#login-form").is_visible()
    # The session is over: the studio itself sends the browser back to sign in.
    page.goto(guarded_url, wait_until="load")
    page.wait_for_url("**/sign-in")
    page.close()
