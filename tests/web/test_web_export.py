"""Exporting the shown chat from the chat page, against the real server: a Markdown and a JSON file are
downloaded, with the chat's messages as the server stored them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.web.page import answer, open_chat, send, wait_done

pytestmark = [pytest.mark.browser, pytest.mark.real_server, pytest.mark.slow]


def export(page: Page, item: str) -> tuple[str, str]:
    page.locator("#export").click()
    with page.expect_download() as download:
        page.get_by_role("menuitem", name=item).click()
    return download.value.suggested_filename, Path(download.value.path()).read_text()


def test_export_downloads_the_chat_as_markdown_and_json(page: Page, server):
    open_chat(page, server, max_tokens=12)
    expect(page.locator("#export")).to_be_disabled()  # a new chat has nothing to export
    send(page, "Name a colour.")
    wait_done(page)
    send(page, "And a fruit?")
    wait_done(page)
    answers = [answer(page, i).locator(".body").inner_text() for i in range(2)]

    name, text = export(page, "Markdown")
    assert name == "Name-a-colour.md"
    assert text.startswith("# Name a colour.\n")
    assert text.count("## You") == 2 and text.count("## Assistant") == 2
    assert "Name a colour." in text and "And a fruit?" in text
    for shown in answers:  # the answer as shown is the stored one (markdown source, same words)
        assert " ".join(shown.split())[:20] in " ".join(text.split()), (shown, text)

    name, text = export(page, "JSON")
    assert name == "Name-a-colour.json"
    session = json.loads(text)
    messages = [m for m in session["messages"] if m["role"] != "system"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert [messages[0]["content"], messages[2]["content"]] == ["Name a colour.", "And a fruit?"]
    assert session["session_id"] == page.evaluate("localStorage.getItem('chatserver.current')")
    assert session["model"]
    assert session["active_leaf_id"] == messages[-1]["id"]
    assert [m["parent_id"] for m in messages[1:]] == [m["id"] for m in messages[:-1]]


def test_markdown_has_the_version_shown_and_json_every_version(page: Page, server):
    open_chat(page, server, max_tokens=4)
    send(page, "Name a planet.")
    wait_done(page)
    page.evaluate("localStorage.setItem('chatserver.settings', JSON.stringify({max_tokens: 9}))")
    open_chat(page, server)  # the same chat, max_tokens from the settings now
    page.locator(".msg.assistant .regenerate").click()
    expect(page.locator(".msg.assistant .nav .count")).to_have_text("2 / 2", timeout=30_000)
    wait_done(page)
    shown = " ".join(answer(page).locator(".body").inner_text().split())

    _, text = export(page, "Markdown")
    assert text.count("## Assistant") == 1 and shown[:30] in " ".join(text.split())
    _, text = export(page, "JSON")
    session = json.loads(text)
    answers = [m for m in session["messages"] if m["role"] == "assistant"]
    assert len(answers) == 2 and answers[0]["parent_id"] == answers[1]["parent_id"]
    assert session["active_leaf_id"] == answers[1]["id"]
