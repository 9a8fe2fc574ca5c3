"""The chat page in headless Chromium against `python -m chatserver serve` with the real model.

Each test asserts what a person would notice on the page. Answers use temperature 0 and small
max_tokens, which the page takes from its query string (see docs/UI.md).
"""

from __future__ import annotations

import json
import re
import time

import pytest

from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.web.page import SLOW, answer, cached, open_chat, send, wait_done, wait_text

pytestmark = [pytest.mark.browser, pytest.mark.real_server, pytest.mark.slow]

def test_answer_streams_then_shows_cache_and_ttft(page: Page, server):
    open_chat(page, server, max_tokens=80)  # long enough to watch it grow on a fast machine
    expect(page.locator("#empty")).to_be_visible()
    send(page, "Tell me about the moon.")
    expect(page.locator(".msg.user")).to_have_text("Tell me about the moon.")
    expect(page.locator("#stop")).to_be_visible()

    body, meta = answer(page).locator(".body"), answer(page).locator(".meta")
    seen = []
    deadline = time.monotonic() + SLOW / 1000
    while not meta.inner_text() and time.monotonic() < deadline:
        seen.append(len(body.inner_text()))
        page.wait_for_timeout(60)
    growth = sorted({n for n in seen if n > 0})
    assert len(growth) >= 3, f"the answer did not grow while streaming: {seen}"
    assert seen == sorted(seen), "the streamed text only ever grows"

    info = wait_done(page)
    assert "cache: miss" in info and re.search(r"TTFT \d+(\.\d)? (ms|s)", info), info
    assert cached(info)[0] == 0
    assert len(body.inner_text()) >= growth[-1]
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator(".session .title")).to_have_text(["Tell me about the moon."])
    expect(page.locator("#chat-title")).to_have_text("Tell me about the moon.")


def test_stop_ends_the_answer_and_the_page_stays_usable(page: Page, server):
    open_chat(page, server, max_tokens=300)
    send(page, "Write a long story about a dragon.")
    wait_text(page, longer_than=20)
    page.locator("#stop").click()
    meta = answer(page).locator(".meta")
    expect(meta.locator(".status")).to_have_text("Stopped", timeout=SLOW)
    stopped = answer(page).locator(".body").inner_text()
    page.wait_for_timeout(1200)
    assert answer(page).locator(".body").inner_text() == stopped, "the answer kept growing after Stop"
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator("#send")).to_be_visible()

    # usable again: the next message streams (and can be stopped too)
    send(page, "Tell me another one.")
    expect(page.locator(".msg.user")).to_have_count(2)
    wait_text(page, n=1, longer_than=5)
    page.locator("#stop").click()
    info = wait_done(page, n=1)
    assert "Stopped" in info and cached(info)[0] > 0, info
    expect(page.locator(".msg.error")).to_have_count(0)


def test_reload_continues_the_session_with_its_history(page: Page, server):
    open_chat(page, server, max_tokens=24)
    send(page, "What is the capital of France?")
    wait_done(page)
    first = answer(page).locator(".body").inner_text()

    page.reload()
    expect(page.locator("#conn")).to_have_text("Connected", timeout=SLOW)
    expect(page.locator(".session .title")).to_have_text(["What is the capital of France?"])
    expect(page.locator('.session [aria-current="page"]')).to_have_count(1)
    expect(page.locator(".msg.user")).to_have_text(["What is the capital of France?"])
    expect(answer(page).locator(".body")).to_have_text(first)

    send(page, "And of Italy?")
    info = wait_done(page)
    hit, prompt = cached(info)
    assert hit > 0 and prompt > hit, info
    assert "cache: ram" in info, info


def test_server_restart_reconnects_and_continues_from_disk(page: Page, server):
    open_chat(page, server, max_tokens=200)
    send(page, "Write a long story about a dragon.")
    wait_text(page, longer_than=20)

    server.stop()  # mid-answer: the server stores the partial answer and spills the session's KV to disk
    expect(page.locator("#conn")).to_have_text(re.compile("Reconnecting"), timeout=SLOW)
    expect(page.locator("#banner")).to_contain_text("Connection lost")
    expect(answer(page).locator(".meta")).to_contain_text("Interrupted")
    partial = answer(page).locator(".body").inner_text()

    server.start()  # same data dir, same port
    expect(page.locator("#conn")).to_have_text("Connected", timeout=SLOW)
    expect(page.locator("#banner")).to_be_hidden()
    # re-rendered from the server's transcript: the partial answer is there, marked interrupted
    expect(page.locator(".msg.user")).to_have_text(["Write a long story about a dragon."])
    expect(answer(page).locator(".meta")).to_contain_text("Interrupted")
    assert answer(page).locator(".body").inner_text().startswith(partial[:20])

    send(page, "Give the dragon a name.")
    wait_text(page, n=1, longer_than=3)
    try:
        page.locator("#stop").click(timeout=2000)  # no need to wait for the whole answer
    except PlaywrightTimeout:
        pass  # it had already ended by itself
    info = wait_done(page, n=1)
    assert "cache: disk" in info and cached(info)[0] > 0, info


def test_going_offline_mid_answer_then_back_continues_the_answer_in_place(page: Page, server):
    open_chat(page, server, max_tokens=300)
    send(page, "Write a long story about a dragon.")
    wait_text(page, longer_than=20)
    page.context.set_offline(True)  # the browser reports it lost the network: the page drops the socket
    expect(page.locator("#conn")).to_have_text("Offline")
    expect(page.locator("#banner")).to_contain_text("offline")
    expect(answer(page).locator(".meta")).to_contain_text("Interrupted")
    expect(page.locator("#stop")).to_be_hidden()
    partial = answer(page).locator(".body").inner_text()
    page.wait_for_timeout(500)  # meanwhile the server goes on with the answer

    page.context.set_offline(False)
    expect(page.locator("#conn")).to_have_text("Connected", timeout=SLOW)
    info = wait_done(page)  # the same answer ends normally, with its stats
    assert "Interrupted" not in info, info
    expect(page.locator(".msg.assistant")).to_have_count(1)
    shown = answer(page).locator(".body").inner_text()
    assert shown.startswith(partial[:20]) and len(shown) > len(partial)
    # nothing lost or repeated: what the page shows is the answer the server stored
    page.reload()
    expect(page.locator("#conn")).to_have_text("Connected", timeout=SLOW)
    expect(page.locator(".msg.assistant")).to_have_count(1)
    assert answer(page).locator(".body").inner_text() == shown


def test_a_second_tab_follows_the_same_answer_and_can_stop_it(page: Page, server):
    open_chat(page, server, max_tokens=300)
    send(page, "Write a long story about a dragon.")
    wait_text(page, longer_than=5)
    other = page.context.new_page()  # same browser profile: it opens the chat shown last
    other.goto(f"{server.url}/?temperature=0")
    expect(other.locator(".msg.user")).to_have_text(["Write a long story about a dragon."], timeout=SLOW)
    wait_text(other, longer_than=40)  # the answer streams in the second tab too
    expect(other.locator("#stop")).to_be_visible()
    other.locator("#stop").click()
    expect(answer(other).locator(".meta .status")).to_have_text("Stopped", timeout=SLOW)
    expect(answer(page).locator(".meta .status")).to_have_text("Interrupted", timeout=SLOW)
    assert answer(page).locator(".body").inner_text() == answer(other).locator(".body").inner_text()
    other.close()


def test_enter_sends_and_shift_enter_makes_a_new_line(page: Page, server):
    held: list = []  # the first answer's "done" frame, held so the answer is still running

    def hold_first_done(route):
        upstream = route.connect_to_server()

        def forward(m):
            if json.loads(m).get("type") == "done" and not held:
                held.append(m)
            else:
                route.send(m)

        upstream.on_message(forward)
        route.on_message(upstream.send)
        held_route.append(route)

    held_route: list = []
    page.route_web_socket(re.compile(r".*/ws$"), hold_first_done)
    open_chat(page, server, max_tokens=8)
    box = page.locator("#input")
    box.click()
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    expect(box).to_have_value("first line\nsecond line")
    expect(page.locator(".msg.user")).to_have_count(0)

    page.keyboard.press("Enter")
    expect(page.locator(".msg.user")).to_have_count(1)
    assert page.locator(".msg.user").inner_text() == "first line\nsecond line"
    expect(box).to_have_value("")

    deadline = time.monotonic() + SLOW / 1000
    while not held and time.monotonic() < deadline:  # the answer's tokens came; its end is held
        page.wait_for_timeout(50)
    assert held, "the first answer never finished"
    page.keyboard.type("too early")  # while the answer runs, Enter does not send
    page.keyboard.press("Enter")
    page.wait_for_timeout(300)
    expect(page.locator(".msg.user")).to_have_count(1)
    expect(box).to_have_value("too early")
    held_route[0].send(held[0])
    wait_done(page)
    page.keyboard.press("Enter")
    expect(page.locator(".msg.user")).to_have_count(2)
    expect(box).to_have_value("")
    wait_done(page)


def test_a_message_sent_before_the_session_is_ready_is_sent_when_it_is(page: Page, server):
    """On a slow server the socket opens well before the session frame: Enter must not be lost."""
    held: list = []

    def hold_session_frames(route):
        upstream = route.connect_to_server()
        upstream.on_message(lambda m: held.append(m) if json.loads(m).get("type") == "session" else route.send(m))
        route.on_message(upstream.send)
        held.append(route)

    page.route_web_socket(re.compile(r".*/ws$"), hold_session_frames)
    page.goto(f"{server.url}/?temperature=0&max_tokens=8")
    expect(page.locator("#conn")).to_have_text("Connected", timeout=SLOW)
    deadline = time.monotonic() + SLOW / 1000
    while len(held) < 2 and time.monotonic() < deadline:  # the route, then its held session frame
        page.wait_for_timeout(50)
    send(page, "Say hi.")
    page.wait_for_timeout(300)
    expect(page.locator(".msg.user")).to_have_count(0)  # not sent yet: there is no session
    route, frames = held[0], held[1:]
    for frame in frames:
        route.send(frame)
    expect(page.locator(".msg.user")).to_have_text(["Say hi."])
    wait_done(page)
    assert answer(page).locator(".body").inner_text().strip()
