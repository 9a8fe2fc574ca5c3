"""The sidebar of the chat page against the real server: new and open chats, a chat the server does not
know, rename (stored on the server), delete on the server after a confirmation (here and from another
tab), and the search box."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.web.page import SLOW, ask_server, open_chat, send, stored_chats, wait_done

pytestmark = [pytest.mark.browser, pytest.mark.real_server, pytest.mark.slow]


def chat_of(page: Page, title: str) -> dict:
    return next(c for c in stored_chats(page) if c["title"] == title)


def test_new_and_open_chats_and_one_the_server_does_not_know(page: Page, server):
    page.add_init_script("""try { if (!sessionStorage.getItem('seeded')) { sessionStorage.setItem('seeded', '1');
        localStorage.setItem('chatserver.chat.sessions', JSON.stringify([
            {session_id: 'gone', resume_token: 'x', title: 'Forgotten chat', updated: Date.now(), notes: {}}]));
        localStorage.setItem('chatserver.current', 'gone'); } } catch (e) {}""")  # remembered here, unknown there
    open_chat(page, server, max_tokens=6)
    expect(page.locator(".msg.notice")).to_contain_text("no longer available")
    expect(page.locator(".session")).to_have_count(0)
    expect(page.locator("#chat-title")).to_have_text("New chat")

    send(page, "Hi there")
    wait_done(page)
    page.locator("#new-chat").click()
    expect(page.locator(".msg")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()
    send(page, "Hello again")
    wait_done(page)
    expect(page.locator(".session .title")).to_have_text(["Hello again", "Hi there"])

    page.locator(".session .open", has_text="Hi there").click()
    expect(page.locator(".msg.user .bubble")).to_have_text(["Hi there"])
    expect(page.locator("#chat-title")).to_have_text("Hi there")
    expect(page.locator(".session.active .title")).to_have_text("Hi there")


def test_rename_is_shown_at_once_and_stored_on_the_server(page: Page, server):
    open_chat(page, server, max_tokens=4)
    send(page, "Plan a trip")
    wait_done(page)
    row = page.locator(".session").first
    row.hover()
    row.locator(".rename").click()
    title = page.locator(".rename-input")
    expect(title).to_be_focused()
    expect(title).to_have_value("Plan a trip")
    title.fill("  Trip   to Paris ")
    title.press("Enter")
    expect(page.locator(".session .title")).to_have_text(["Trip to Paris"])
    expect(page.locator("#chat-title")).to_have_text("Trip to Paris")
    chat = chat_of(page, "Trip to Paris")
    exported = ask_server(server, chat, {"type": "export"}, "export")
    assert exported["session"]["title"] == "Trip to Paris", exported

    row.hover()
    row.locator(".rename").click()  # Escape leaves the title as it was
    page.locator(".rename-input").fill("Something else")
    page.locator(".rename-input").press("Escape")
    expect(page.locator(".session .title")).to_have_text(["Trip to Paris"])
    page.reload()
    expect(page.locator(".session .title")).to_have_text(["Trip to Paris"], timeout=SLOW)


def test_delete_asks_first_then_deletes_on_the_server_and_shows_a_new_chat(page: Page, server):
    open_chat(page, server, max_tokens=4)
    send(page, "First chat")
    wait_done(page)
    page.locator("#new-chat").click()
    send(page, "Second chat")
    wait_done(page)
    first, second = chat_of(page, "First chat"), chat_of(page, "Second chat")

    row = page.locator(".session", has_text="Second chat")  # the chat shown
    row.hover()
    row.locator(".delete").click()
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("“Second chat” will be deleted on the server")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(page.locator(".session .title")).to_have_text(["Second chat", "First chat"])

    row.hover()
    row.locator(".delete").click()
    dialog.get_by_role("button", name="Delete").click()
    expect(page.locator(".session .title")).to_have_text(["First chat"])
    expect(page.locator("#chat-title")).to_have_text("New chat")
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator(".msg")).to_have_count(0)  # no "was deleted" notice for the page's own delete
    page.wait_for_timeout(1500)  # no reconnect loop: it stays connected, to a new chat
    expect(page.locator("#conn")).to_have_text("Connected")
    expect(page.locator("#banner")).to_be_hidden()
    assert ask_server(server, second)["code"] == "session_not_found"
    send(page, "Third chat")  # the new chat works
    wait_done(page)

    row = page.locator(".session", has_text="First chat")  # a chat not shown
    row.hover()
    row.locator(".delete").click()
    page.locator("#confirm").get_by_role("button", name="Delete").click()
    expect(page.locator(".session .title")).to_have_text(["Third chat"])
    expect(page.locator(".msg.user .bubble")).to_have_text(["Third chat"])  # the chat shown stays
    assert ask_server(server, first)["code"] == "session_not_found"
    assert [c["title"] for c in stored_chats(page)] == ["Third chat"]


def test_a_chat_deleted_in_another_tab_becomes_a_new_chat_here(page: Page, server):
    open_chat(page, server, max_tokens=4)
    send(page, "Shared chat")
    wait_done(page)
    other = page.context.new_page()
    other.goto(f"{server.url}/?temperature=0")
    expect(other.locator(".msg.user .bubble")).to_have_text(["Shared chat"], timeout=SLOW)
    row = other.locator(".session", has_text="Shared chat")
    row.hover()
    row.locator(".delete").click()
    other.locator("#confirm").get_by_role("button", name="Delete").click()
    expect(other.locator(".session")).to_have_count(0)

    expect(page.locator(".msg.notice")).to_contain_text("This chat was deleted", timeout=SLOW)
    expect(page.locator(".session")).to_have_count(0)
    expect(page.locator("#chat-title")).to_have_text("New chat")
    page.wait_for_timeout(1500)
    expect(page.locator("#conn")).to_have_text("Connected")
    send(page, "Still here")
    wait_done(page)
    other.close()


def test_search_filters_the_chat_titles(page: Page, server):
    page.add_init_script("""try { if (!localStorage.getItem('chatserver.chat.sessions')) {
        const now = Date.now();
        localStorage.setItem('chatserver.chat.sessions', JSON.stringify([
            {session_id: 'a', resume_token: 'x', title: 'Paris in spring', updated: now - 1000, notes: {}},
            {session_id: 'b', resume_token: 'x', title: 'Python lists', updated: now - 2000, notes: {}},
            {session_id: 'c', resume_token: 'x', title: 'A recipe for soup', updated: now - 3000, notes: {}}])); } } catch (e) {}""")
    open_chat(page, server)
    expect(page.locator(".session .title")).to_have_text(["Paris in spring", "Python lists", "A recipe for soup"])
    search = page.locator("#search")
    search.fill("p")
    expect(page.locator(".session .title")).to_have_text(["Paris in spring", "Python lists", "A recipe for soup"])
    search.fill("PARIS")
    expect(page.locator(".session .title")).to_have_text(["Paris in spring"])
    search.fill("pizza")
    expect(page.locator(".session")).to_have_count(0)
    expect(page.locator("#no-match")).to_have_text("No chat title contains “pizza”.")
    search.press("Escape")
    expect(search).to_have_value("")
    expect(page.locator(".session")).to_have_count(3)
