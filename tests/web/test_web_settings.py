"""The settings panel and the colour theme of the chat page, against the real server: values survive a
reload and reach the server with each message, a new chat starts with the system prompt, the model's
name is shown, dark mode follows the system unless the toggle overrides it."""

from __future__ import annotations

import json
import urllib.request

import pytest
from playwright.sync_api import Page, expect

from tests.web.page import SLOW, answer, send, wait_done

pytestmark = [pytest.mark.browser, pytest.mark.real_server, pytest.mark.slow]

LIGHT_BG, DARK_BG = "rgb(255, 255, 255)", "rgb(31, 32, 35)"


def open_plain(page: Page, server) -> None:
    """The page without sampling fields in its address (those would override the panel)."""
    page.goto(server.url)
    expect(page.locator("#conn")).to_have_text("Connected", timeout=SLOW)


def background(page: Page) -> str:
    return page.evaluate("getComputedStyle(document.body).backgroundColor")


def test_settings_survive_a_reload_and_show_the_model(page: Page, server):
    model = json.load(urllib.request.urlopen(f"{server.url}/v1/models"))["data"][0]["id"]
    open_plain(page, server)
    expect(page.locator("#model-name")).to_have_text(model)
    page.locator("#open-settings").click()
    panel = page.locator("#settings")
    expect(panel).to_be_visible()
    expect(panel.locator("#settings-model")).to_have_text(model)
    panel.locator("#set-system").fill("You are a pirate.")
    panel.locator("#set-temperature").fill("0.3")
    panel.locator("#set-top_p").fill("0.8")
    panel.locator("#set-max_tokens").fill("7")
    panel.locator("#set-seed").fill("42")
    panel.locator("#set-temperature").fill("9")  # out of range: marked, and the last valid value is kept
    expect(panel.locator("#set-temperature")).to_have_attribute("aria-invalid", "true")
    panel.get_by_role("button", name="Done").click()
    expect(panel).to_be_hidden()

    page.reload()
    expect(page.locator("#conn")).to_have_text("Connected", timeout=SLOW)
    page.locator("#open-settings").click()
    expect(panel.locator("#set-system")).to_have_value("You are a pirate.")
    expect(panel.locator("#set-temperature")).to_have_value("0.3")
    expect(panel.locator("#set-top_p")).to_have_value("0.8")
    expect(panel.locator("#set-max_tokens")).to_have_value("7")
    expect(panel.locator("#set-seed")).to_have_value("42")

    panel.get_by_role("button", name="Reset to defaults").click()
    for field in ("system", "temperature", "top_p", "max_tokens", "seed"):
        expect(panel.locator(f"#set-{field}")).to_have_value("")
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()


def test_a_new_chat_starts_with_the_system_prompt_and_the_sampling_settings(page: Page, server):
    sent: list[dict] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(json.loads(payload))))
    open_plain(page, server)
    page.locator("#open-settings").click()
    page.locator("#set-system").fill("Answer in French.")
    page.locator("#set-temperature").fill("0")
    page.locator("#set-max_tokens").fill("3")
    page.locator("#set-seed").fill("5")
    page.keyboard.press("Escape")

    send(page, "Say hello.")
    info = wait_done(page)
    assert "Reached the length limit" in info, info  # max_tokens 3 reached the server
    assert "3 tokens generated" in answer(page).locator(".meta").get_attribute("title")
    frames = [f for f in sent if f["type"] in ("system", "user")]
    assert frames[0] == {"type": "system", "content": "Answer in French."}
    assert frames[1] == {"type": "user", "content": "Say hello.", "temperature": 0, "max_tokens": 3, "seed": 5}

    send(page, "And goodbye.")  # not a new chat: no system frame again
    wait_done(page)
    assert [f["type"] for f in sent if f["type"] in ("system", "user")] == ["system", "user", "user"]
    page.reload()  # the stored transcript starts with the system prompt
    expect(page.locator(".msg.system")).to_contain_text("System prompt", timeout=SLOW)
    page.locator(".msg.system summary").click()
    expect(page.locator(".msg.system .system-text")).to_have_text("Answer in French.")


def test_dark_mode_follows_the_system_until_the_toggle_overrides_it(browser, server):
    context = browser.new_context(color_scheme="dark")
    page = context.new_page()
    try:
        open_plain(page, server)
        assert background(page) == DARK_BG
        toggle = page.locator("#theme-toggle")
        expect(toggle).to_have_attribute("aria-pressed", "true")
        toggle.click()
        assert background(page) == LIGHT_BG
        expect(toggle).to_have_attribute("aria-pressed", "false")
        page.reload()  # the choice is kept
        expect(page.locator("#conn")).to_have_text("Connected", timeout=SLOW)
        assert background(page) == LIGHT_BG
        page.emulate_media(color_scheme="light")
        page.emulate_media(color_scheme="dark")  # the system changing does not undo the person's choice
        assert background(page) == LIGHT_BG

        page.locator("#open-settings").click()
        expect(page.locator('#settings input[name="theme"][value="light"]')).to_be_checked()
        page.locator('#settings input[name="theme"][value="system"]').check()  # follow the system again
        assert background(page) == DARK_BG
        page.emulate_media(color_scheme="light")
        page.wait_for_function("getComputedStyle(document.body).backgroundColor === 'rgb(255, 255, 255)'")
    finally:
        context.close()


def test_a_light_system_gets_the_light_theme_and_the_toggle_makes_it_dark(page: Page, server):
    open_plain(page, server)
    assert background(page) == LIGHT_BG
    page.locator("#theme-toggle").click()
    assert background(page) == DARK_BG
    text = page.evaluate("getComputedStyle(document.body).color")
    assert text != "rgb(29, 33, 39)", "the text stays readable on the dark background"
