"""Driving the chat page in tests: open it, send a message, find and wait for answers."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

SLOW = 30_000  # ms: a turn of the real model on a busy 2-core machine
ALLOWED_TAGS = {"P", "UL", "OL", "LI", "SPAN", "CODE", "PRE", "STRONG", "EM", "H3", "H4", "H5", "H6", "BLOCKQUOTE",
                "HR", "DIV", "BUTTON"}  # what markdown.js creates (DIV/BUTTON: the code block frame and Copy)


def open_chat(page: Page, server, **settings) -> None:
    query = "&".join(f"{k}={v}" for k, v in {"temperature": 0, **settings}.items())
    page.goto(f"{server.url}/?{query}")
    expect(page.locator("#conn")).to_have_text("Connected", timeout=SLOW)


def send(page: Page, text: str) -> None:
    page.locator("#input").fill(text)
    page.locator("#input").press("Enter")


def answer(page: Page, n: int = -1):
    return page.locator(".msg.assistant").nth(n)


def wait_done(page: Page, n: int = -1) -> str:
    """Wait for the answer's grey meta line; return it."""
    meta = answer(page, n).locator(".meta")
    expect(meta).to_contain_text("TTFT", timeout=SLOW)
    return meta.inner_text()


def cached(meta: str) -> tuple[int, int]:
    m = re.search(r"(\d+)/(\d+) prompt tokens cached", meta)
    assert m, meta
    return int(m[1]), int(m[2])


def wait_text(page: Page, n: int = -1, longer_than: int = 0) -> None:
    page.wait_for_function(
        "([n, len]) => { const a = [...document.querySelectorAll('.msg.assistant')].at(n); "
        "return a && a.querySelector('.body').textContent.length > len; }", arg=[n, longer_than], timeout=SLOW)


def stored_chats(page: Page) -> list[dict]:
    """This browser's chat list (localStorage), as the page keeps it."""
    return page.evaluate("JSON.parse(localStorage.getItem('chatserver.chat.sessions') || '[]')")


def ask_server(server, chat: dict, frame: dict | None = None, reply: str = "") -> dict:
    """Resume `chat` ({session_id, resume_token}) over a socket of the test's own and return the answer to
    hello (the session frame or an error); with `frame`, send it and return the first frame of type
    `reply` (or an error)."""
    import json

    from websockets.sync.client import connect

    with connect(server.url.replace("http://", "ws://") + "/ws") as ws:
        ws.send(json.dumps({"type": "hello", "session_id": chat["session_id"], "resume_token": chat["resume_token"]}))
        while (f := json.loads(ws.recv(timeout=30)))["type"] not in ("session", "error"):
            pass
        if frame is None or f["type"] == "error":
            return f
        ws.send(json.dumps(frame))
        while (f := json.loads(ws.recv(timeout=30)))["type"] not in (reply, "error") or f.get("turn_id"):
            pass
        return f
