"""Save screenshots of the chat page's states into docs/screenshots/ (real server, real model).

    .venv/bin/python -m tests.web.screenshots

Not a test (it rewrites tracked files); run it by hand after changing web/, then look at each picture.
The branch pictures (regenerated.png, editing.png) need a server that names messages (conversation trees).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from tests.helpers.paths import MODEL_CACHE
from tests.helpers.paths import REPO
from tests.web.browser import RestartableServer, launch

OUT = REPO / "docs" / "screenshots"
SLOW = 60_000


def ask(page: Page, text: str) -> None:
    page.locator("#input").fill(text)
    page.locator("#input").press("Enter")


def done(page: Page) -> None:
    expect(page.locator(".msg.assistant").last.locator(".meta")).to_contain_text("TTFT", timeout=SLOW)


def shoot(page: Page, name: str) -> None:
    page.mouse.move(0, 0)  # no hover effects unless wanted
    page.wait_for_timeout(250)  # transitions end
    page.screenshot(path=OUT / name)


def conversation(page: Page) -> None:
    shoot(page, "empty.png")
    ask(page, "Write a haiku about autumn leaves.")
    done(page)
    page.locator("#new-chat").click()
    ask(page, "How do I reverse a list in Python? Answer with a short code block.")
    page.wait_for_function("document.querySelector('.msg.assistant .body').textContent.length > 200", timeout=SLOW)
    page.screenshot(path=OUT / "streaming.png")
    done(page)
    ask(page, "Give three tips for learning Python as a bulleted list.")
    done(page)
    page.set_viewport_size({"width": 1200, "height": 900})
    shoot(page, "conversation.png")
    page.locator("#theme-toggle").click()
    shoot(page, "dark.png")
    page.evaluate("window.chatTheme.set('system')")  # follow the (light) system again
    page.set_viewport_size({"width": 1200, "height": 760})


def panels(page: Page) -> None:
    page.locator("#open-settings").click()
    page.locator("#set-system").fill("You are a concise assistant. Answer in at most three sentences.")
    shoot(page, "settings.png")
    page.locator("#set-system").fill("")
    page.keyboard.press("Escape")

    page.locator("#open-help").click()
    shoot(page, "help.png")
    page.keyboard.press("Escape")

    row = page.locator(".session").nth(1)
    row.hover()
    row.locator(".rename").click()
    page.locator(".rename-input").fill("Autumn haiku")
    page.screenshot(path=OUT / "sidebar-rename.png")
    page.locator(".rename-input").press("Enter")
    row = page.locator(".session").nth(1)
    row.hover()
    row.locator(".delete").click()
    page.screenshot(path=OUT / "sidebar-delete.png")
    page.locator("#confirm").get_by_role("button", name="Cancel").click()


def branches(browser, server) -> bool:
    """Regenerate and edit in a chat of its own (sampling, not greedy, so that versions differ)."""
    context = browser.new_context(viewport={"width": 1200, "height": 760})
    context.add_init_script("try { localStorage.setItem('chatserver.settings', "
                            "JSON.stringify({temperature: 0.9, seed: 7, max_tokens: 60})) } catch (e) {}")
    page = context.new_page()
    page.goto(server.url)
    expect(page.locator("#conn")).to_have_text("Connected", timeout=SLOW)
    ask(page, "Suggest a name for a black cat.")
    done(page)
    if page.locator(".msg.assistant[data-id]").count() == 0:
        context.close()
        return False
    page.locator(".msg.assistant .regenerate").click()
    expect(page.locator(".msg.assistant .nav .count")).to_have_text("2 / 2", timeout=SLOW)
    done(page)
    page.locator(".msg.assistant").hover()
    page.wait_for_timeout(250)
    page.screenshot(path=OUT / "regenerated.png")
    page.locator(".msg.user").hover()
    page.locator(".msg.user .edit").click()
    page.locator(".editor textarea").fill("Suggest a name for a white cat.")
    page.screenshot(path=OUT / "editing.png")
    context.close()
    return True


def reconnecting_and_phone(browser, server, page: Page) -> None:
    server.stop()
    expect(page.locator("#conn")).to_have_text(re.compile("Reconnecting"), timeout=SLOW)
    page.screenshot(path=OUT / "reconnecting.png")
    server.start()
    expect(page.locator("#conn")).to_have_text("Connected", timeout=SLOW)

    phone = browser.new_context(viewport={"width": 390, "height": 760}, is_mobile=True, has_touch=True,
                                device_scale_factor=2, storage_state=page.context.storage_state())
    mobile = phone.new_page()
    mobile.goto(f"{server.url}/")
    expect(mobile.locator("#conn")).to_have_text("Connected", timeout=SLOW)
    expect(mobile.locator(".msg.assistant")).to_have_count(2)
    mobile.screenshot(path=OUT / "mobile.png")
    mobile.locator("#menu").click()
    mobile.wait_for_timeout(400)  # the drawer slides in
    mobile.screenshot(path=OUT / "mobile-sidebar.png")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    server = RestartableServer(Path(tempfile.mkdtemp(prefix="chat-shots-")), MODEL_CACHE).start()
    try:
        with sync_playwright() as p:
            browser = launch(p)
            context = browser.new_context(viewport={"width": 1200, "height": 760})
            context.add_init_script("try { if (!localStorage.getItem('chatserver.settings')) localStorage.setItem("
                                    "'chatserver.settings', JSON.stringify({temperature: 0, max_tokens: 150})) } catch (e) {}")
            page = context.new_page()
            page.goto(server.url)
            expect(page.locator("#conn")).to_have_text("Connected", timeout=SLOW)
            conversation(page)
            panels(page)
            if not branches(browser, server):
                print("the server does not name messages: no branch screenshots")
            reconnecting_and_phone(browser, server, page)
            browser.close()
    finally:
        if server.running:
            server.stop()
    print("saved", ", ".join(sorted(f.name for f in OUT.glob("*.png"))))


if __name__ == "__main__":
    main()
