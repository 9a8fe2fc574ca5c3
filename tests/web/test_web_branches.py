"""Versions of a message on the chat page, against the real server (conversation trees): ↻ regenerate,
✎ edit inline, ‹ n / m › between versions, a dropped connection in the middle of a new version, and
another tab following. Greedy answers (temperature 0); max_tokens is changed between versions through
the settings (localStorage) so that versions differ: a longer greedy answer starts with the shorter one."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.web.page import SLOW, answer, open_chat, send, wait_done, wait_text

pytestmark = [pytest.mark.browser, pytest.mark.real_server, pytest.mark.slow]


def max_tokens(page: Page, n: int) -> None:
    """What the settings panel would save; read by the page for each frame it sends."""
    page.evaluate("n => localStorage.setItem('chatserver.settings', JSON.stringify({max_tokens: n}))", n)


def body(page: Page, n: int = -1) -> str:
    return answer(page, n).locator(".body").inner_text()


def count(page: Page, selector: str):
    return page.locator(f"{selector} .nav .count")


def test_regenerate_makes_a_second_version_and_the_arrows_switch(page: Page, server):
    open_chat(page, server)  # temperature 0; max_tokens from the settings
    max_tokens(page, 3)
    send(page, "Describe the sea.")
    wait_done(page)
    first = body(page)
    expect(page.locator(".msg.assistant .nav")).to_be_hidden()  # one version: no arrows
    regen = page.locator(".msg.assistant .regenerate")
    expect(regen).to_be_visible()

    max_tokens(page, 12)
    regen.click()
    expect(count(page, ".msg.assistant")).to_have_text("2 / 2", timeout=SLOW)
    wait_done(page)
    second = body(page)
    assert len(second) > len(first) and second.startswith(first[:8]), (first, second)  # greedy: same start
    expect(page.locator(".msg.assistant")).to_have_count(1)  # in place of the first, not below it

    page.locator(".msg.assistant .prev").click()
    expect(count(page, ".msg.assistant")).to_have_text("1 / 2")
    expect(answer(page).locator(".body")).to_have_text(first)
    expect(answer(page).locator(".meta")).to_contain_text("TTFT")  # its stats came back with it
    expect(page.locator(".msg.assistant .prev")).to_be_disabled()
    page.locator(".msg.assistant .next").click()
    expect(count(page, ".msg.assistant")).to_have_text("2 / 2")
    expect(answer(page).locator(".body")).to_have_text(second)

    page.reload()  # the version shown is the server's active path
    expect(count(page, ".msg.assistant")).to_have_text("2 / 2", timeout=SLOW)
    expect(answer(page).locator(".body")).to_have_text(second)

    page.locator("#chat-title").click()
    page.keyboard.press("Alt+R")  # the shortcut
    expect(count(page, ".msg.assistant")).to_have_text("3 / 3", timeout=SLOW)
    wait_done(page)

    max_tokens(page, 40)
    send(page, "Now describe a mountain.")
    wait_text(page, longer_than=3)
    expect(page.locator(".msg.user .edit").first).to_be_disabled()  # nothing changes while an answer streams
    expect(answer(page).locator(".regenerate")).to_be_hidden()
    wait_done(page)
    expect(answer(page, 0).locator(".regenerate")).to_be_hidden()  # only the last answer has ↻
    expect(answer(page, 1).locator(".regenerate")).to_be_visible()
    expect(page.locator(".msg.user .edit").first).to_be_enabled()


def test_edit_a_message_inline_makes_a_new_version_of_the_rest(page: Page, server):
    open_chat(page, server, max_tokens=6)
    send(page, "Name a fruit.")
    wait_done(page)
    send(page, "Name a colour.")
    wait_done(page)
    first_user = page.locator(".msg.user").first

    first_user.hover()
    first_user.locator(".edit").click()
    editor = page.locator(".editor textarea")
    expect(editor).to_be_focused()
    expect(editor).to_have_value("Name a fruit.")
    editor.fill("Something else")
    page.locator(".editor").get_by_role("button", name="Cancel").click()
    expect(page.locator(".editor")).to_have_count(0)
    expect(page.locator(".msg.user .bubble")).to_have_text(["Name a fruit.", "Name a colour."])

    first_user.hover()
    first_user.locator(".edit").click()
    editor.fill("Name a vegetable.")
    page.locator(".editor").get_by_role("button", name="Save").click()
    expect(page.locator(".msg.user .bubble")).to_have_text(["Name a vegetable."], timeout=SLOW)
    expect(count(page, ".msg.user")).to_have_text("2 / 2")
    wait_done(page)
    expect(page.locator(".msg.assistant")).to_have_count(1)
    expect(page.locator(".msg.assistant .nav")).to_be_hidden()  # a new message has one answer

    page.locator(".msg.user .prev").click()  # the earlier version, with the rest of its conversation
    expect(page.locator(".msg.user .bubble")).to_have_text(["Name a fruit.", "Name a colour."])
    expect(page.locator(".msg.assistant")).to_have_count(2)
    expect(count(page, ".msg.user").first).to_have_text("1 / 2")
    page.locator(".msg.user .next").first.click()
    expect(page.locator(".msg.user .bubble")).to_have_text(["Name a vegetable."])


@pytest.mark.parametrize("how", ["regenerate", "edit"])
def test_a_dropped_connection_in_a_new_version_continues_in_place(page: Page, server, how):
    open_chat(page, server)
    max_tokens(page, 4)
    send(page, "Write a long story about a dragon.")
    wait_done(page)
    max_tokens(page, 300)
    if how == "regenerate":
        page.locator(".msg.assistant .regenerate").click()
    else:
        page.locator(".msg.user").hover()
        page.locator(".msg.user .edit").click()
        page.locator(".editor textarea").fill("Write a long story about a unicorn.")
        page.locator(".editor textarea").press("Enter")
    wait_text(page, longer_than=40)
    page.context.set_offline(True)  # the page drops its socket; the server goes on with the answer
    expect(page.locator("#conn")).to_have_text("Offline")
    expect(answer(page).locator(".meta")).to_contain_text("Interrupted")
    partial = body(page)
    page.wait_for_timeout(500)

    page.context.set_offline(False)
    expect(page.locator("#conn")).to_have_text("Connected", timeout=SLOW)
    info = wait_done(page)
    assert "Interrupted" not in info, info
    expect(page.locator(".msg.assistant")).to_have_count(1)
    shown = body(page)
    assert shown.startswith(partial[:30]) and len(shown) > len(partial), (partial, shown)
    selector = ".msg.assistant" if how == "regenerate" else ".msg.user"
    expect(count(page, selector)).to_have_text("2 / 2")
    page.reload()  # nothing lost or repeated: the page showed the answer the server stored
    expect(count(page, selector)).to_have_text("2 / 2", timeout=SLOW)
    assert body(page) == shown


def test_another_tab_follows_a_regenerate(page: Page, server):
    open_chat(page, server)
    max_tokens(page, 3)
    send(page, "Describe the moon.")
    wait_done(page)
    other = page.context.new_page()
    other.goto(f"{server.url}/?temperature=0")
    expect(other.locator(".msg.assistant .body")).to_have_text(body(page), timeout=SLOW)

    max_tokens(page, 10)
    page.locator(".msg.assistant .regenerate").click()
    wait_done(page)
    expect(count(page, ".msg.assistant")).to_have_text("2 / 2")
    expect(other.locator(".msg.assistant")).to_have_count(1)
    expect(other.locator(".msg.assistant .body")).to_have_text(body(page), timeout=SLOW)
    expect(count(other, ".msg.assistant")).to_have_text("2 / 2")
    other.close()
