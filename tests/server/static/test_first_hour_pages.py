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
    with page.expect_response(
        lambda r: r.url.endswith("/api/voices") and r.request.method == "POST", timeout=120_000
    ) as resp:
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


# ---------------------------------------------------------------- accessibility and polish (items 5, 6)
def _axe_source() -> str:
    axe = pytest.importorskip("axe_playwright_python", reason="pip install axe-playwright-python (ships axe-core)")
    from pathlib import Path

    return (Path(axe.__file__).parent / "axe.min.js").read_text(encoding="utf-8")


def _serious(page, axe_js: str) -> list[str]:
    page.add_script_tag(content=axe_js)
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['impact']} {v['id']}: {[n['target'] for n in v['nodes']][:3]} {v['nodes'][0]['failureSummary'][:160]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


STUDIO_ROUTES = ["", "#/studio", "#/characters", "#/create", "#/conversation"]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_studio_pages_have_no_serious_accessibility_violations(browser, base_url, console, scheme):
    axe_js = _axe_source()
    context, page = new_page(browser, base_url, console, viewport={"width": 1280, "height": 860}, color_scheme=scheme)
    try:
        found = {}
        for route in STUDIO_ROUTES:
            page.goto(f"/{route}")
            page.wait_for_selector("html[data-ready]")
            page.wait_for_load_state("networkidle")
            if problems := _serious(page, axe_js):
                found[route or "/"] = problems
        assert found == {}, found
    finally:
        context.close()


@pytest.mark.xfail(reason="agent page (owned elsewhere): #meter has no aria-valuenow before Start", strict=False)
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_agent_page_has_no_serious_accessibility_violations(browser, base_url, console, scheme):
    axe_js = _axe_source()
    context, page = new_page(browser, base_url, console, viewport={"width": 1280, "height": 860}, color_scheme=scheme)
    try:
        page.goto("/agent.html")
        page.wait_for_load_state("networkidle")
        assert _serious(page, axe_js) == []
    finally:
        context.close()


def test_a_wrong_api_key_is_not_called_saved(browser, tmp_path, console):
    from .conftest import open_app, start_server

    console.allow(r"status of 401")
    with start_server(tmp_path, {"server": {"api_keys": ["web-test-key-456"]}}) as server:
        context, page = new_page(browser, server.url, console, viewport={"width": 1280, "height": 860})
        try:
            open_app(page)
            page.wait_for_selector("#key-bar:not([hidden])")
            page.fill("#api-key", "not-the-key")
            page.click("#key-bar button[type=submit]")
            page.wait_for_function("document.querySelector('#toast').dataset.kind === 'error'")
            assert "not accept" in page.inner_text("#toast") and "saved" not in page.inner_text("#toast")
            assert page.evaluate("localStorage.getItem('echoforge.apiKey')") in (None, '""')
            page.fill("#api-key", "web-test-key-456")
            page.click("#key-bar button[type=submit]")
            page.locator("#voice-grid .voice-card").first.wait_for()
            assert "saved" in page.inner_text("#toast")
        finally:
            context.close()


def test_wrong_file_types_and_over_long_clips_are_caught_when_chosen(page, tmp_path):
    import numpy as np
    import soundfile as sf

    from .conftest import open_app

    open_app(page, "#/create")
    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    page.set_input_files("#cv-file", str(text))
    page.wait_for_selector("#cv-error:not([hidden])")  # before any submit
    assert "not an audio file" in page.inner_text("#cv-error")
    assert page.is_hidden("#cv-preview")

    long_clip = tmp_path / "long.wav"  # over the server's max_upload_seconds (120 s by default)
    sf.write(long_clip, (0.1 * np.sin(np.arange(8000 * 125) / 5)).astype("float32"), 8000)
    page.set_input_files("#cv-file", str(long_clip))
    page.wait_for_function("document.querySelector('#cv-error').textContent.includes('accepts clips up to')")
    assert page.is_hidden("#cv-preview")

    good = tmp_path / "good.wav"
    sf.write(good, (0.1 * np.sin(np.arange(16000 * 6) / 5)).astype("float32"), 16000)
    page.set_input_files("#cv-file", str(good))
    page.wait_for_selector("#cv-preview:not([hidden])")
    assert page.is_hidden("#cv-error")  # the message goes once the problem is fixed


def test_focus_stays_in_the_grid_after_delete(page, base_url):
    import httpx

    from .conftest import open_app

    with httpx.Client(base_url=base_url) as client:
        clip = (__import__("numpy").sin(__import__("numpy").arange(16000 * 2) / 5) * 0.2).astype("float32")
        from echoforge.audio import encode

        r = client.post("/api/voices", data={"name": "Focus Test Voice", "transcript": "A tone."},
                        files={"audio": ("t.wav", encode(clip, 16000, "wav"), "audio/wav")})  # fmt: skip
        assert r.status_code == 201, r.text
    open_app(page, "#/characters")
    page.fill("#f-search", "Focus Test")
    card = page.locator("#voice-grid .voice-card", has_text="Focus Test Voice")
    card.wait_for()
    page.once("dialog", lambda d: d.accept())
    card.get_by_role("button", name="Delete Focus Test Voice").click()
    card.wait_for(state="detached")
    page.wait_for_function("document.activeElement && document.activeElement !== document.body")
    assert page.evaluate("document.activeElement.closest('#voice-grid, #filters') !== null")


def test_the_studio_renders_long_text_in_full(page):
    from .conftest import open_app
    from .test_studio import audio_duration

    sentence = "The morning train left the station a little after seven, carrying commuters and students. "
    text = (sentence * 40)[:3600].rsplit(".", 1)[0] + "."  # ≈ 3,600 characters: the old limit refused ≈ 1,530
    open_app(page, "#/studio")
    page.fill("#gen-text", text)
    page.click("#gen-submit")
    page.wait_for_selector("#gen-result:not([hidden])", timeout=300_000)
    assert audio_duration(page, "#gen-audio") > 150  # ≈ 3½ minutes, nothing cut at the old 90 s


def test_fallback_is_said_where_the_choice_is_made(page):
    from .conftest import open_app

    open_app(page, "#/conversation")
    page.wait_for_selector("#conv-engine-note:not([hidden])")
    assert "espeak" in page.inner_text("#conv-engine-note") and "not CSM" in page.inner_text("#conv-engine-note")
    open_app(page, "#/studio")
    page.locator("#gen-presets label", has_text="Calm").click()
    page.wait_for_selector("#gen-preset-fallback:not([hidden])")
    assert "changes nothing audible" in page.inner_text("#gen-preset-fallback")
    page.locator("#gen-presets label", has_text="Neutral").click()
    page.wait_for_selector("#gen-preset-fallback", state="hidden")


def test_a_duplicate_name_is_refused_and_the_message_goes_once_fixed(page, console, speech_wav):
    from .conftest import open_app

    console.allow(r"status of 409")
    open_app(page, "#/create")
    page.fill("#cv-name", "Atlas")  # a built-in voice's name
    page.fill("#cv-transcript", "This is my reference voice, recorded for the studio test.")
    page.set_input_files("#cv-file", str(speech_wav))
    page.wait_for_selector("#cv-preview:not([hidden])")
    page.click("#cv-submit")
    page.wait_for_selector("#cv-error:not([hidden])")
    assert "already exists" in page.inner_text("#cv-error")
    assert page.get_attribute("#cv-name", "aria-invalid") == "true"
    page.fill("#cv-name", "Atlas the Second")
    page.wait_for_selector("#cv-error", state="hidden")
    assert page.get_attribute("#cv-name", "aria-invalid") is None
