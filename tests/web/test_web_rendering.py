"""What the chat page shows of an answer, in headless Chromium against the real server: model output is
text (never HTML that runs), markdown renders with DOM nodes only, and the view follows a streaming
answer unless the person scrolls away (on a phone)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.web.page import ALLOWED_TAGS, SLOW, answer, open_chat, send, wait_done, wait_text

pytestmark = [pytest.mark.browser, pytest.mark.real_server, pytest.mark.slow]


def test_html_in_an_answer_is_shown_as_text_not_run(page: Page, server):
    open_chat(page, server, max_tokens=60)
    message = 'Repeat exactly this text and nothing else: <img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
    send(page, message)
    user = page.locator(".msg.user")
    expect(user).to_have_text(message)
    assert user.locator("img, script").count() == 0
    wait_done(page)

    body = answer(page).locator(".body")
    assert "<img" in body.inner_text(), body.inner_text()  # the model repeated it; the page shows it as text
    tags = set(body.evaluate("b => [...b.querySelectorAll('*')].map(e => e.tagName)"))
    assert tags <= ALLOWED_TAGS, tags
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator(".messages img, .messages script").count() == 0


def test_autoscroll_pauses_when_scrolled_up_on_a_phone(browser, server):
    context = browser.new_context(viewport={"width": 360, "height": 460}, has_touch=True, is_mobile=True)
    page = context.new_page()
    try:
        open_chat(page, server, max_tokens=300)
        expect(page.locator("#sidebar")).not_to_be_in_viewport()
        page.locator("#menu").click()
        expect(page.locator("#sidebar")).to_be_in_viewport()
        page.locator("#backdrop").click(position={"x": 340, "y": 200})
        expect(page.locator("#sidebar")).not_to_be_in_viewport()

        send(page, "Write a long story about a dragon.")
        scroller = page.locator("#scroller")
        at_bottom = "s => s.scrollHeight - s.scrollTop - s.clientHeight < 40"
        page.wait_for_function("() => { const s = document.querySelector('#scroller'); return s.scrollHeight > s.clientHeight + 150; }",
                               timeout=SLOW)
        assert scroller.evaluate(at_bottom), "the page follows the streaming answer"

        scroller.evaluate("s => s.scrollBy(0, -120)")  # the person scrolls up to read
        expect(page.locator("#jump")).to_be_visible()
        top = scroller.evaluate("s => s.scrollTop")
        length = len(answer(page).locator(".body").inner_text())
        wait_text(page, longer_than=length + 15)
        assert scroller.evaluate("s => s.scrollTop") == top, "the page moved while the person was reading"

        page.locator("#jump").click()
        length = len(answer(page).locator(".body").inner_text())
        wait_text(page, longer_than=length + 15)
        assert scroller.evaluate(at_bottom), "following resumes at the bottom"
        page.locator("#stop").click()
        wait_done(page)
    finally:
        context.close()


def test_markdown_renders_structure_with_dom_nodes_only(page: Page, server):
    page.goto(server.url)
    md = ("# Title\n\nSome **bold**, *italic* and `code <b>`.\n\n- one\n- two <img src=x onerror=alert(1)>\n  - nested\n\n"
          "1. first\n2. second\n\n```python\nprint('<script>alert(1)</script>')\n```\n\n<script>window.__xss=3</script>\n"
          "snake_case_name stays")
    result = page.evaluate("""async (md) => {
        const {renderMarkdown} = await import('/static/markdown.js');
        const root = document.createElement('div');
        root.appendChild(renderMarkdown(md));
        document.body.appendChild(root);
        return {tags: [...root.querySelectorAll('*')].map(e => e.tagName), text: root.textContent,
                h: root.querySelector('h3')?.textContent, strong: root.querySelector('p strong')?.textContent,
                em: root.querySelector('p em')?.textContent, inline: root.querySelector('p code')?.textContent,
                ul: [...root.querySelectorAll(':scope > ul > li > span')].map(e => e.textContent),
                nested: root.querySelector('ul ul li')?.textContent,
                ol: [...root.querySelectorAll('ol > li')].map(e => e.textContent),
                pre: root.querySelector('pre code')?.textContent, lang: root.querySelector('.code-bar span')?.textContent,
                last: root.lastElementChild.textContent};
    }""", md)
    assert set(result["tags"]) <= ALLOWED_TAGS, result["tags"]
    assert result["h"] == "Title" and result["strong"] == "bold" and result["em"] == "italic"
    assert result["inline"] == "code <b>"
    assert result["ul"] == ["one", "two <img src=x onerror=alert(1)>"] and result["nested"] == "nested"
    assert result["ol"] == ["first", "second"]
    assert result["pre"] == "print('<script>alert(1)</script>')" and result["lang"] == "python"
    assert result["last"] == "<script>window.__xss=3</script>\nsnake_case_name stays"
    assert page.evaluate("typeof window.__xss") == "undefined"


def test_scripts_never_parse_strings_as_html():
    from tests.helpers.paths import REPO

    scripts = sorted((REPO / "web").glob("*.js"))
    assert {"app.js", "markdown.js", "transcript.js", "sidebar.js"} <= {p.name for p in scripts}
    for path in scripts:
        code = re.sub(r"//[^\n]*", "", path.read_text())  # comments may name them
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|createContextualFragment|DOMParser|document\.write"
                             r"|eval\(|new Function|srcdoc", code), path.name
