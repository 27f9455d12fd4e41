"""The dashboard in a real headless browser (the distribution's Chromium, driven by
playwright's Python package; no browser download): against a gateway with an emulated engine
and an admin key, the page shows an application in flight, draws its type's demand graph with
edge probabilities, and logs no console error."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from hermes.gateway.config import emulated_default
from hermes.testing.gateway_thread import gateway_in_thread
from test_state_api import run_one_app, streaming, tags

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on PATH: install the distribution's package (CI does, .ci/run)",
)
ADMIN = {"Authorization": "Bearer root"}


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def test_the_dashboard_shows_an_application_in_flight_and_its_graph(browser: object) -> None:
    from playwright.sync_api import Browser, ConsoleMessage, Error

    assert isinstance(browser, Browser)
    cfg = emulated_default(port=0, time_scale=10.0).model_copy(update={"admin_key": "root"})
    with gateway_in_thread(cfg) as (_, base):
        run_one_app(base, "warm-1", ADMIN)  # type qa learned: plan -> answer
        with streaming(base, tags("live-1", "plan")):
            page = browser.new_page()
            problems: list[str] = []

            def console(m: ConsoleMessage) -> None:
                if m.type == "error":
                    problems.append(m.text)

            def crashed(e: Error) -> None:
                problems.append(str(e))

            page.on("console", console)
            page.on("pageerror", crashed)
            # The key in the fragment: never sent to the server, kept for the tab.
            page.goto(base + "/dashboard#key=root")
            page.wait_for_selector("#apps td:text-is('live-1')", timeout=20_000)
            row = page.locator("#apps tr", has_text="live-1")
            assert "plan (llm)" in row.inner_text()
            assert "#key" not in page.url
            # The graph of its type, drawn with edge probabilities; its stage marked active.
            graph = page.locator("#graphs .graph[data-app-type='qa'] svg")
            graph.locator("g.node.active[data-stage='plan']").wait_for(timeout=20_000)
            for stage in ("<start>", "plan", "answer", "<end>"):
                assert graph.locator(f"g.node[data-stage='{stage}']").count() == 1
            labels = graph.locator("text.edge-label").all_text_contents()
            assert labels == ["1.00", "1.00", "1.00"]
            assert page.locator("#upstreams td.up").inner_text() == "up"
            assert "1 applications" in page.locator("#status").inner_text()
            # A second poll went by without error.
            page.wait_for_timeout(1500)
            assert problems == []
            page.close()


def test_the_dashboard_asks_for_the_admin_key(browser: object) -> None:
    from playwright.sync_api import Browser

    assert isinstance(browser, Browser)
    cfg = emulated_default(port=0, time_scale=0.05).model_copy(update={"admin_key": "root"})
    with gateway_in_thread(cfg) as (_, base):
        page = browser.new_page()
        page.goto(base + "/dashboard")
        page.wait_for_selector("#key-form:not([hidden])", timeout=20_000)
        assert "admin key is needed" in page.locator("#status").inner_text()
        page.fill("#key", "wrong")
        page.click("#key-form button")
        page.wait_for_selector("#status:text('the key was refused')", timeout=20_000)
        page.fill("#key", "root")
        page.click("#key-form button")
        page.wait_for_selector("#upstreams td:text-is('emulated-0')", timeout=20_000)
        assert page.locator("#key-form").is_hidden()
        page.close()
