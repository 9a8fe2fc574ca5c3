"""The chat page through HAProxy in front of two replicas (scripts/cluster.sh): the replica serving the chat
is killed with -9; the page reconnects at /ws?session=ID, the other replica resumes the chat, and the next
answer comes from the shared KV tier, its past not recomputed."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.helpers.admin import ADMIN_AUTH
from tests.helpers.cluster import cluster_sh
from tests.web.browser import CHROMIUM, launch
from tests.web.page import SLOW, answer, cached, send, stored_chats, wait_done

pytestmark = [pytest.mark.browser, pytest.mark.real_server, pytest.mark.slow]


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/setup.sh --test (installs Debian's chromium)")
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


def _lease_owner(url: str, session_id: str) -> str:
    req = urllib.request.Request(f"{url}/api/sessions/{session_id}", headers=ADMIN_AUTH)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)["lease_owner"]


def test_the_page_goes_on_with_its_chat_on_another_replica(browser, cluster):
    page = browser.new_context().new_page()
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(f"{cluster.url}/?temperature=0&max_tokens=12")
    expect(page.locator("#conn")).to_have_text("Connected", timeout=SLOW)
    send(page, "Notes from the harbour meeting: the crates went to the old mill. Where did the crates go?")
    wait_done(page)
    session_id = stored_chats(page)[0]["session_id"]
    owner = _lease_owner(cluster.url, session_id)
    assert owner in ("r1", "r2") and sockets == [cluster.url.replace("http", "ws") + "/ws"]  # a new chat: no id

    assert cluster_sh(cluster.env, "kill", owner, timeout=30).returncode == 0
    expect(page.locator("#conn")).to_have_text("Connected", timeout=SLOW)  # again, through HAProxy
    assert sockets[-1].endswith(f"/ws?session={session_id}")
    send(page, "And the grain?")
    meta = wait_done(page)
    assert "cache: shared" in meta and cached(meta)[0] > 0, meta
    assert _lease_owner(cluster.url, session_id) == ({"r1", "r2"} - {owner}).pop()
    expect(answer(page, 0).locator(".body")).not_to_be_empty()
