"""Save screenshots of the chat page's main states into docs/screenshots/ (real server, real model).

    .venv/bin/python -m tests.web.screenshots

Not a test (it rewrites tracked files); run it by hand after changing web/.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from tests.helpers.paths import MODEL_CACHE
from tests.helpers.paths import REPO
from tests.web.browser import RestartableServer, launch

OUT = REPO / "docs" / "screenshots"
SLOW = 60_000


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    server = RestartableServer(Path(tempfile.mkdtemp(prefix="chat-shots-")), MODEL_CACHE).start()
    try:
        with sync_playwright() as p:
            browser = launch(p)
            context = browser.new_context(viewport={"width": 1200, "height": 760})
            page = context.new_page()
            page.goto(f"{server.url}/?temperature=0&max_tokens=150")
            expect(page.locator("#conn")).to_have_text("Connected", timeout=SLOW)
            page.screenshot(path=OUT / "empty.png")

            def ask(text: str) -> None:
                page.locator("#input").fill(text)
                page.locator("#input").press("Enter")

            def done() -> None:
                expect(page.locator(".msg.assistant").last.locator(".meta")).to_contain_text("TTFT", timeout=SLOW)

            ask("Write a haiku about autumn leaves.")
            done()
            page.locator("#new-chat").click()
            ask("How do I reverse a list in Python? Answer with a short code block.")
            page.wait_for_function("document.querySelector('.msg.assistant .body').textContent.length > 200", timeout=SLOW)
            page.screenshot(path=OUT / "streaming.png")
            done()
            ask("Give three tips for learning Python as a bulleted list.")
            done()
            page.set_viewport_size({"width": 1200, "height": 900})
            page.screenshot(path=OUT / "conversation.png")

            server.stop()
            expect(page.locator("#conn")).to_have_text(re.compile("Reconnecting"), timeout=SLOW)
            page.screenshot(path=OUT / "reconnecting.png")
            server.start()
            expect(page.locator("#conn")).to_have_text("Connected", timeout=SLOW)

            phone = browser.new_context(viewport={"width": 390, "height": 760}, is_mobile=True, has_touch=True,
                                        device_scale_factor=2, storage_state=context.storage_state())
            mobile = phone.new_page()
            mobile.goto(f"{server.url}/")
            expect(mobile.locator("#conn")).to_have_text("Connected", timeout=SLOW)
            expect(mobile.locator(".msg.assistant")).to_have_count(2)
            mobile.screenshot(path=OUT / "mobile.png")
            mobile.locator("#menu").click()
            mobile.wait_for_timeout(400)  # the drawer slides in
            mobile.screenshot(path=OUT / "mobile-sidebar.png")
            browser.close()
    finally:
        if server.running:
            server.stop()
    print("saved", ", ".join(sorted(f.name for f in OUT.glob("*.png"))))


if __name__ == "__main__":
    main()
