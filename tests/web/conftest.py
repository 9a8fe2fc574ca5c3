"""Fixtures for the browser tests: one real server and one headless Chromium per module."""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import sync_playwright

from tests.helpers.paths import MODEL_CACHE
from tests.web.browser import CHROMIUM, RestartableServer, launch


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = RestartableServer(tmp_path_factory.mktemp("web-data"), MODEL_CACHE).start()
    yield srv
    if srv.running:
        srv.stop()


@pytest.fixture(autouse=True)
def server_is_up(server):
    """A test that stops the server and fails before restarting it must not fail the ones after it."""
    if not server.running:
        server.start()


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/setup.sh --test (installs Debian's chromium)")
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def allowed_console_errors() -> tuple[str, ...]:
    """Console errors containing one of these are expected (a module may override this)."""
    return ("WebSocket",)


@pytest.fixture
def page(browser, server, allowed_console_errors):
    """A fresh browser profile (empty localStorage) per test; fails the test on any JavaScript error."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text)
            if msg.type == "error" and not any(a in msg.text for a in allowed_console_errors) else None)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
