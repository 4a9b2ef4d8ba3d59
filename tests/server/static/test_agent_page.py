"""Agent page items of the review (issue 16) in a real browser.

Static files and ``/api/health`` come from the real espeak server (``base_url``); the agent
WebSocket itself is stubbed in the page (``page.route_web_socket``), so no agent models load and the
test decides when the server is "ready" or "dies". Chromium's fake microphone feeds ``getUserMedia``.
"""

from __future__ import annotations

import json

import pytest

from .conftest import CHROMIUM_ARGS, new_page, shot

pytestmark = pytest.mark.integration

READY = {"type": "ready", "sample_rate": 24000, "input_sample_rate": 48000, "format": "pcm_s16le", "engine": "espeak"}


@pytest.fixture(scope="module")
def mic_browser(playwright_instance):
    from .conftest import CHROMIUM

    b = playwright_instance.chromium.launch(
        executable_path=CHROMIUM,
        args=[*CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"],
    )
    yield b
    b.close()


class FakeAgent:
    """The page's ``/api/agent`` sockets: records the start message, answers ``loading…`` and waits."""

    def __init__(self) -> None:
        self.sockets: list = []
        self.starts: list[dict] = []

    def handle(self, ws) -> None:
        self.sockets.append(ws)

        def on_message(message) -> None:
            if isinstance(message, str):
                msg = json.loads(message)
                if msg.get("type") == "start":
                    self.starts.append(msg)
                    ws.send(json.dumps({"type": "log", "message": "loading agent models…"}))

        ws.on_message(on_message)

    def send(self, event: dict, index: int = -1) -> None:
        self.sockets[index].send(json.dumps(event))


@pytest.fixture
def agent_page(mic_browser, base_url, console):
    context, pg = new_page(mic_browser, base_url, console, viewport={"width": 1280, "height": 860}, color_scheme="light")
    context.grant_permissions(["microphone"], origin=base_url)
    fake = FakeAgent()
    pg.route_web_socket("**/api/agent", fake.handle)
    pg.goto("/agent.html")
    pg.wait_for_selector("html[data-ready]")
    yield pg, fake
    context.close()
    assert console.unexpected() == [], "console errors in the page"


def _start_and_load(pg, fake) -> None:
    pg.click("#start")
    pg.wait_for_function("document.querySelector('#state').textContent.includes('Loading models')")
    assert len(fake.starts) == 1


def _start_ready(pg, fake, index: int = 0) -> None:
    """Start (or Reconnect has started) a session and let the fake server say ready."""
    if index == 0:
        pg.click("#start")
    for _ in range(100):
        if len(fake.starts) > index:
            break
        pg.wait_for_timeout(50)
    assert len(fake.starts) == index + 1, "the page sent no start message"
    fake.send(READY, index=index)
    pg.wait_for_function("!document.querySelector('#interrupt').disabled")


def test_loading_state_until_the_server_is_ready(agent_page):
    pg, fake = agent_page
    _start_and_load(pg, fake)
    pg.wait_for_timeout(300)  # still loading: the server has not said ready
    shot(pg, "agent-loading")
    assert pg.inner_text("#state") == "Loading models…"
    for sel in ["#start", "#interrupt", "#pause"]:
        assert pg.is_disabled(sel), sel
    fake.send(READY)
    pg.wait_for_function("!document.querySelector('#interrupt').disabled")
    assert "Loading" not in pg.inner_text("#state")
    assert pg.is_enabled("#pause") and pg.is_enabled("#stop") and pg.is_disabled("#start")
    assert pg.inner_text("#stop") == "Stop"


def test_server_lost_is_said_and_reconnect_works(agent_page):
    pg, fake = agent_page
    _start_ready(pg, fake)
    fake.sockets[0].close(code=1011, reason="server going away")  # the server side drops the socket
    pg.wait_for_selector("#lost:not([hidden])", timeout=5000)
    assert "Connection to the server lost" in pg.inner_text("#lost")
    shot(pg, "agent-connection-lost")
    assert pg.get_attribute("#lost", "role") == "alert"
    assert pg.is_disabled("#interrupt") and pg.is_disabled("#stop")
    assert "Connection to the server lost" in pg.inner_text("#log")
    pg.click("#reconnect")
    pg.wait_for_function("document.querySelector('#state').textContent.includes('Loading models')")
    assert pg.is_hidden("#lost")
    _start_ready(pg, fake, index=1)
    assert len(fake.sockets) == 2


def test_log_lines_say_who_spoke_in_words(agent_page):
    pg, fake = agent_page
    _start_ready(pg, fake)
    fake.send({"type": "transcript", "text": "What port does the server use?"})
    fake.send({"type": "assistant", "text": "It listens on port 8000.", "sources": ["server.md"]})
    fake.send({"type": "assistant", "text": "Let me", "interrupted": True})
    pg.wait_for_selector("#log li.agent.cut")
    pg.evaluate("document.documentElement.dataset.theme = 'dark'")
    shot(pg, "agent-log-dark")
    user = pg.inner_text("#log li.user")
    agent = pg.locator("#log li.agent").first.inner_text()
    assert "You:" in user and "What port" in user
    assert "Agent:" in agent and "port 8000" in agent and "You:" not in agent
    assert "Agent:" in pg.locator("#log li.agent.cut").inner_text()
    # meta lines (connected, knowledge base…) carry no speaker label
    assert all("You:" not in t and "Agent:" not in t for t in pg.locator("#log li.meta").all_inner_texts())


def test_theme_toggle_and_engine_badge_like_the_studio(page, console):
    console.allow(r"ERR_FAILED")  # the aborted health requests
    page.goto("/agent.html?health_ms=300")
    page.wait_for_selector("html[data-ready]")
    badge = page.locator("#engine-badge")
    assert badge.get_attribute("data-state") == "fallback"
    assert "espeak" in badge.inner_text() and "fallback" in badge.inner_text()
    toggle = page.locator("#theme-toggle")
    assert toggle.get_attribute("aria-label") == "Switch to dark mode"
    toggle.click()
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert page.evaluate("localStorage.getItem('echoforge.theme')") == "dark"
    assert toggle.get_attribute("aria-label") == "Switch to light mode"
    page.reload()
    page.wait_for_selector("html[data-ready]")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"  # theme-init.js applies it
    page.route("**/api/health", lambda route: route.abort())
    page.wait_for_function("document.querySelector('#engine-badge').dataset.state === 'offline'", timeout=5000)
    assert "offline" in badge.inner_text().lower()
    page.unroute("**/api/health")
    page.wait_for_function("document.querySelector('#engine-badge').dataset.state === 'fallback'", timeout=5000)


def test_engine_badge_labels_a_smoke_test_model(page):
    """A tiny random CSM checkpoint is not shown as "CSM engine" (issue 25 item 4)."""

    def smoke_health(route):
        body = route.fetch().json()
        body["engine"].update(name="csm", is_fallback=False, smoke_test=True, description="CSM smoke-test model")
        route.fulfill(json=body)

    page.route("**/api/health", smoke_health)
    for url in ("/#/studio", "/agent.html"):
        page.goto(url)
        page.wait_for_selector("html[data-ready]")
        badge = page.locator("#engine-badge")
        page.wait_for_function("document.querySelector('#engine-badge').dataset.state === 'fallback'", timeout=5000)
        assert "smoke-test model (not CSM-1B)" in badge.inner_text()
        assert "CSM engine" not in badge.inner_text()
