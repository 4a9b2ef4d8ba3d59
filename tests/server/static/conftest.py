"""Browser tests for the web studio: a real uvicorn server on loopback, Debian's Chromium via Playwright.

The server is the real app (``echoforge.server.app:create_app``) with the espeak-ng fallback
engine and a throw-away data directory, served in this process (``tests/_servers.AppServer``). Chromium is the system binary (``/usr/bin/chromium``);
``playwright install`` is never needed. Screenshots go to ``tests/artifacts/web/``.

Set ``ECHOFORGE_WEB_BASE_URL`` to point the tests at an already-running server instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from _servers import AppServer

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (browser tests)")

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "tests" / "artifacts" / "web"
CHROMIUM = os.environ.get("ECHOFORGE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--autoplay-policy=no-user-gesture-required",
]

def start_server(tmp: Path, settings: dict | None = None) -> AppServer:
    """The real app with the espeak-ng engine in this process (``tests/_servers.AppServer``);
    ``settings`` are extra :func:`load_settings` overrides (e.g. ``{"server": {"api_keys": [...]}}``)."""
    return AppServer(tmp / "data", "espeak", {"log_level": "WARNING", **(settings or {})}).start()


# Package scope, not session: sync Playwright keeps an event loop running in the main thread while
# it lives, and asyncio tests collected after this folder (tests/server/test_*.py) cannot run then.
@pytest.fixture(scope="package")
def base_url(tmp_path_factory) -> str:
    external = os.environ.get("ECHOFORGE_WEB_BASE_URL")
    if external:
        yield external.rstrip("/")
        return
    with start_server(tmp_path_factory.mktemp("web-server")) as server:
        yield server.url


@pytest.fixture(scope="package")
def playwright_instance():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="package")
def browser(playwright_instance):
    b = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield b
    b.close()


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """A short real speech clip made with espeak-ng (for uploads and the fake microphone)."""
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng not installed")
    path = tmp_path_factory.mktemp("clips") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "This is my reference voice, recorded for the studio test."],
                   check=True, capture_output=True)
    return path


class ConsoleLog:
    """Console errors and uncaught page errors; 4xx/5xx resource loads may be allowed per test."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed: list[re.Pattern[str]] = []

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]


@pytest.fixture
def console() -> ConsoleLog:
    return ConsoleLog()


def new_page(browser, base_url: str, console: ConsoleLog, **context_args):
    context = browser.new_context(base_url=base_url, **context_args)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.on("console", lambda m: console.errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: console.errors.append(f"pageerror: {e}"))
    return context, page


@pytest.fixture
def page(browser, base_url, console):
    """A fresh browser context (empty localStorage) on the studio; asserts no console errors."""
    context, pg = new_page(browser, base_url, console, viewport={"width": 1280, "height": 860}, color_scheme="light")
    yield pg
    context.close()
    assert console.unexpected() == [], "console errors in the page"


def open_app(page, route: str = "") -> None:
    page.goto(f"/{route}")
    page.wait_for_selector("html[data-ready]")


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=True)
    return path
