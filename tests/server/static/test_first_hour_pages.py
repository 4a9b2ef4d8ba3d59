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


def test_a_voice_made_without_transcript_shows_what_was_heard_for_editing(page, speech_wav):
    pytest.importorskip("faster_whisper")
    from .conftest import open_app

    open_app(page, "#/create")
    page.fill("#cv-name", "Heard In Browser")
    page.set_input_files("#cv-file", str(speech_wav))
    page.wait_for_selector("#cv-preview:not([hidden])")
    with page.expect_response(lambda r: r.url.endswith("/api/voices") and r.request.method == "POST", timeout=120_000) as resp:
        page.click("#cv-submit")
    assert resp.value.status == 201, resp.value.text()
    heard = page.wait_for_selector("#cv-heard")
    assert "reference voice" in heard.input_value().lower()
    voice_id = resp.value.json()["id"]
    page.fill("#cv-heard", "This is my reference voice, recorded for the studio test.")
    with page.expect_response(lambda r: voice_id in r.url and r.request.method == "PATCH") as patched:
        page.click("#cv-heard-save")
    assert patched.value.status == 200
    page.wait_for_function("document.querySelector('#cv-heard-status').textContent.includes('saved')")
    assert page.evaluate(f"fetch('/api/voices/{voice_id}').then(r => r.json())")["transcript"].endswith("studio test.")
