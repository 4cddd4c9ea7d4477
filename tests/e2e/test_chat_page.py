"""The chat page (issue #18) in a real headless Chromium against a real server: pick a model, send a
message, watch the streamed reply and its tokens/s, stop a long reply; a screenshot is kept in
.artifacts/chat-page.png."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.e2e.browser import FLAGS, chromium_path
from tests.e2e.conftest import CHAT_MODEL

ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=FLAGS)
        yield browser
        browser.close()


def longer(body: str | None) -> str:
    return json.dumps({**json.loads(body or "{}"), "min_tokens": 1500})


def test_chat_in_a_browser(server, browser):
    page = browser.new_page()
    page.goto(f"{server.base_url}/chat")
    expect(page.locator(f"#model option[value='{CHAT_MODEL}']")).to_have_count(1)
    page.select_option("#model", CHAT_MODEL)

    page.fill("#input", "Hello there")
    page.click("#send")
    reply = page.locator(".msg.assistant").last
    expect(reply.locator(".finish")).to_contain_text("finish:", timeout=60_000)
    assert reply.locator(".content").inner_text().strip()  # streamed text arrived
    expect(page.locator("#stats")).to_contain_text("tokens/s")

    # no max_tokens: runs to the end of the context, unless the random model ends it; the page's request is
    # given a min_tokens on its way (the browser's own routing) so that it is still running when Stop is pressed
    page.route("**/v1/chat/completions", lambda route: route.continue_(post_data=longer(route.request.post_data)))
    page.fill("#input", "Now a very long story, please.")
    page.click("#send")
    expect(page.locator("#send")).to_have_text("Stop")
    second = page.locator(".msg.assistant").last
    expect(second.locator(".content")).not_to_be_empty(timeout=60_000)
    page.click("#send")
    expect(second.locator(".finish")).to_have_text("(stopped)", timeout=10_000)
    expect(page.locator("#send")).to_have_text("Send")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-page.png"), full_page=True)
    page.close()
    # the server went on serving after the browser hung up mid-stream
    assert server.client().models.retrieve(CHAT_MODEL).id == CHAT_MODEL


def test_the_page_asks_for_the_api_key(server, browser, tmp_path):
    from tests.e2e.conftest import start_server, stop_server_cleanly

    locked = start_server(server.home, tmp_path / "server.log", "--api-key", "sekrit")
    try:
        page = browser.new_page()
        page.goto(f"{locked.base_url}/chat")
        expect(page.locator("#key")).to_be_visible()
        page.fill("#key", "sekrit")
        page.press("#key", "Enter")
        expect(page.locator(f"#model option[value='{CHAT_MODEL}']")).to_have_count(1)
        page.close()
    finally:
        stop_server_cleanly(locked)
