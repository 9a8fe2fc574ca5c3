"""Copying a whole message from the chat page (real server): with the Clipboard API, and without it."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.web.page import SLOW, open_chat, send, wait_done

pytestmark = [pytest.mark.browser, pytest.mark.real_server, pytest.mark.slow]

QUESTION = "Give two short tips\nfor sleeping well."


def stored_answer(page: Page) -> str:
    """The last answer's text as the server stored it (markdown source), from a reload's transcript."""
    return page.evaluate("""() => new Promise((resolve) => {
        const chats = JSON.parse(localStorage.getItem('chatserver.chat.sessions'));
        const chat = chats.find((c) => c.session_id === localStorage.getItem('chatserver.current'));
        const ws = new WebSocket(location.origin.replace('http', 'ws') + '/ws');
        ws.onopen = () => ws.send(JSON.stringify({type: 'hello', session_id: chat.session_id, resume_token: chat.resume_token}));
        ws.onmessage = (e) => { const f = JSON.parse(e.data); if (f.type === 'session') { ws.close();
            resolve(f.messages.filter((m) => m.role === 'assistant').at(-1).content); } };
    })""")


def test_copy_puts_the_whole_message_on_the_clipboard(page: Page, server):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    open_chat(page, server, max_tokens=40)
    send(page, QUESTION)
    wait_done(page)

    page.locator(".msg.assistant").hover()
    page.locator(".msg.assistant .copy-msg").click()
    expect(page.locator("#announce")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == stored_answer(page)

    page.locator(".msg.user").hover()
    page.locator(".msg.user .copy-msg").click()
    page.wait_for_function("async (q) => (await navigator.clipboard.readText()) === q", arg=QUESTION, timeout=SLOW)


def test_copy_works_without_the_clipboard_api(page: Page, server):
    """Pages served over plain http from another host have no navigator.clipboard: the page falls back to
    a selected textarea and execCommand("copy")."""
    page.add_init_script("""Object.defineProperty(navigator, 'clipboard', {value: undefined});
        document.addEventListener('copy', () => { window.__copied = document.activeElement.value; });""")
    open_chat(page, server, max_tokens=8)
    send(page, "Hi")
    wait_done(page)
    page.locator(".msg.assistant").hover()
    page.locator(".msg.assistant .copy-msg").click()
    expect(page.locator("#announce")).to_have_text("Copied.")
    copied = page.evaluate("window.__copied")
    assert copied and copied == stored_answer(page)
