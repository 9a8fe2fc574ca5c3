"""Keyboard shortcuts of the chat page and their help dialog, against the real server."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.web.page import SLOW, answer, open_chat, send, wait_done, wait_text

pytestmark = [pytest.mark.browser, pytest.mark.real_server, pytest.mark.slow]


def test_question_mark_shows_the_shortcuts_unless_typing(page: Page, server):
    open_chat(page, server)
    page.locator("#chat-title").click()  # focus on the page, not in a text field
    page.keyboard.press("?")
    help_ = page.locator("#help")
    expect(help_).to_be_visible()
    for what in ("New chat", "Focus the message box", "Stop the answer", "Regenerate the last answer"):
        expect(help_).to_contain_text(what)
    expect(help_.locator("tr", has_text="Regenerate")).to_contain_text("Alt + R")
    page.keyboard.press("Escape")
    expect(help_).to_be_hidden()

    page.locator("#input").click()
    page.keyboard.type("why?")  # typed, not a shortcut
    expect(page.locator("#input")).to_have_value("why?")
    expect(help_).to_be_hidden()
    page.keyboard.press("Control+/")  # from anywhere
    expect(help_).to_be_visible()
    page.keyboard.press("Escape")
    page.locator("#open-help").click()
    expect(help_).to_be_visible()
    help_.get_by_role("button", name="Close").click()
    expect(help_).to_be_hidden()


def test_new_chat_focus_and_stop_from_the_keyboard(page: Page, server):
    open_chat(page, server, max_tokens=300)
    page.locator("#chat-title").click()
    page.keyboard.press("Shift+Escape")
    expect(page.locator("#input")).to_be_focused()
    page.locator("#chat-title").click()
    page.keyboard.press("/")
    expect(page.locator("#input")).to_be_focused()
    expect(page.locator("#input")).to_have_value("")

    send(page, "Write a long story about a dragon.")
    wait_text(page, longer_than=20)
    page.locator("#chat-title").click()  # Escape stops wherever the focus is
    page.keyboard.press("Escape")
    expect(answer(page).locator(".meta .status")).to_have_text("Stopped", timeout=SLOW)

    page.keyboard.press("Control+Shift+O")
    expect(page.locator("#chat-title")).to_have_text("New chat")
    expect(page.locator(".msg")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()
    send(page, "Hi")
    wait_done(page)
    expect(page.locator(".session")).to_have_count(2)
