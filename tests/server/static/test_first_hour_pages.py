"""Issue 25 in Chromium: the API docs render offline (every non-loopback request blocked)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from .conftest import new_page

pytestmark = pytest.mark.integration


def _offline(context) -> list[str]:
    """Block every request that leaves the machine; return the list of blocked URLs."""
    blocked: list[str] = []

    def route(r) -> None:
        host = urlsplit(r.request.url).hostname or ""
        if r.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost", "::1"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    return blocked


@pytest.mark.parametrize(
    ("path", "operation"),
    [("/docs", ".opblock-summary-path"), ("/redoc", "[data-section-id^='operation/'], [id^='operation/']")],
)
def test_api_docs_render_offline(browser, base_url, console, path, operation):
    context, page = new_page(browser, base_url, console, viewport={"width": 1280, "height": 900})
    try:
        blocked = _offline(context)
        page.goto(path)
        page.wait_for_selector(operation, timeout=60_000)
        text = page.inner_text("body")
        assert "/v1/audio/speech" in text and "/api/generate" in text, text[:500]
        assert blocked == [], f"{path} asked the network for {blocked}"
        assert not [e for e in console.unexpected() if "SwaggerUIBundle" in e or "Redoc" in e]
    finally:
        context.close()
