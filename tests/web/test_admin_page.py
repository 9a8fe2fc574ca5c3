"""The operator page at /admin, in Chromium, against the real server with an admin token."""

import asyncio

import pytest
from playwright.sync_api import Page, expect

from tests.helpers.paths import MODEL_CACHE
from tests.helpers.real_server import WsChat
from tests.web.browser import RestartableServer

pytestmark = [pytest.mark.browser, pytest.mark.real_server]

TOKEN = "page-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = RestartableServer(tmp_path_factory.mktemp("admin-data"), MODEL_CACHE, "--admin-token", TOKEN).start()

    async def seed():
        chat, _ = await WsChat.open(srv.url.replace("http://", "ws://") + "/ws")
        await chat.turn("Plan a picnic for four people", max_tokens=8, temperature=0)
        await chat.close()

    asyncio.run(seed())
    yield srv
    srv.stop()


@pytest.fixture
def allowed_console_errors() -> tuple[str, ...]:
    return ("status of 401",)  # the wrong token tried first


def test_operator_signs_in_sees_sessions_and_evicts_one(page: Page, server):
    page.goto(server.url + "/admin")
    page.fill("#token", "wrong")
    page.click("#login button")
    expect(page.locator("#login-error")).to_contain_text("bearer token")
    page.fill("#token", TOKEN)
    page.click("#login button")
    row = page.locator("#rows tr").first
    expect(row).to_contain_text("Plan a picnic for four people")
    expect(row.locator(".tier")).to_have_text("ram")
    expect(page.locator("#cards")).to_contain_text("KV in RAM")
    row.get_by_role("button", name="Evict").click()
    expect(page.locator("#rows tr").first.locator(".tier")).to_have_text("disk")
    page.select_option("#tier", "ram")
    expect(page.locator("#rows tr")).to_have_count(0)
