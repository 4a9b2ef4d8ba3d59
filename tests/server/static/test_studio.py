"""The web studio in a real browser against the real server (espeak fallback engine)."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest

from .conftest import CHROMIUM, CHROMIUM_ARGS, new_page, open_app, shot

pytestmark = pytest.mark.integration


def audio_duration(page, selector: str) -> float:
    """Duration of an <audio> once its metadata loaded (0 if it never does)."""
    return page.eval_on_selector(selector, """(a) => new Promise((resolve) => {
        if (a.readyState >= 1 && Number.isFinite(a.duration)) return resolve(a.duration);
        a.addEventListener('loadedmetadata', () => resolve(a.duration), {once: true});
        a.addEventListener('error', () => resolve(0), {once: true});
        setTimeout(() => resolve(0), 10000);
    })""")


def test_characters_grid_loads_and_filters(page):
    open_app(page)
    cards = page.locator("#voice-grid .voice-card")
    cards.first.wait_for()
    total = cards.count()
    assert total >= 2
    # Engine badge: the espeak engine is a fallback and must say so.
    assert "fallback engine (not CSM)" in page.inner_text("#engine-badge")
    shot(page, "characters-light")

    # Each card plays its sample clip (fetched with auth, played through one shared player).
    play = cards.first.locator(".play-btn")
    play.click()
    page.wait_for_selector('.voice-card .play-btn[data-state="playing"]')
    assert play.get_attribute("aria-pressed") == "true"
    play.click()  # stop
    assert play.get_attribute("aria-pressed") == "false"

    genders = page.eval_on_selector_all("#f-gender option", "os => os.map(o => o.value).filter(Boolean)")
    assert genders, "gender filter offers the voices' genders"
    page.select_option("#f-gender", genders[0])
    filtered = cards.count()
    assert 0 < filtered <= total
    names = page.eval_on_selector_all("#voice-grid .voice-card", "cs => cs.map(c => c.dataset.voiceId)")
    voices = page.evaluate("fetch('/api/voices').then(r => r.json()).then(d => d.voices)")
    by_id = {v["id"]: v for v in voices}
    assert all(by_id[n]["tags"].get("gender") == genders[0] for n in names)
    page.select_option("#f-gender", "")
    assert cards.count() == total

    # Free-text search on one voice's name narrows the grid to it.
    target = voices[-1]
    page.fill("#f-search", target["name"])
    shown = page.eval_on_selector_all("#voice-grid .voice-card", "cs => cs.map(c => c.dataset.voiceId)")
    assert target["id"] in shown
    assert len(shown) < total or total == 1
    page.fill("#f-search", "zzz-no-such-voice-zzz")
    assert cards.count() == 0
    assert page.is_visible("#voice-empty")

    # Opening a character lands in the studio with it selected.
    page.fill("#f-search", "")
    first_id = cards.first.get_attribute("data-voice-id")
    cards.first.get_by_role("link", name="Open").click()
    page.wait_for_selector("#view-studio:not([hidden])")
    assert page.input_value("#gen-voice") == first_id


def test_generation_completes_with_playable_audio(page):
    open_app(page, "#/studio")
    page.fill("#gen-text", "Hello from the EchoForge studio.")
    page.locator("#gen-presets label", has_text="Calm").click()
    assert page.input_value("#gen-temperature") == "0.5"  # the calm row of the emotion table
    page.click("#gen-submit")
    page.wait_for_selector("#gen-result:not([hidden])", timeout=30_000)
    assert audio_duration(page, "#gen-audio") > 0.3
    assert page.get_attribute("#gen-download", "href").startswith("blob:")
    assert "Done" in page.inner_text("#gen-status")
    # The generation is remembered in this browser's history.
    assert page.locator("#history li").count() == 1
    shot(page, "studio-result")

    # History survives a reload and replays the result from the server.
    page.reload()
    page.wait_for_selector("html[data-ready]")
    assert page.locator("#history li").count() == 1
    page.locator("#history li").first.get_by_role("button", name="Load generation").click()
    page.wait_for_selector("#gen-result:not([hidden])")
    assert audio_duration(page, "#gen-audio") > 0.3


def test_streaming_playback_over_websocket(page):
    open_app(page, "#/studio")
    page.fill("#gen-text", "Streaming speech, chunk by chunk.")
    page.locator("label", has_text="Stream live").click()
    page.focus("#gen-text")
    page.keyboard.press("Control+Enter")  # keyboard shortcut submits
    page.wait_for_selector("#gen-result:not([hidden])", timeout=30_000)
    assert audio_duration(page, "#gen-audio") > 0.3
    assert "streamed" in page.inner_text("#gen-meta")


@pytest.mark.parametrize("case", ["empty", "too_long"])
def test_bad_input_shows_the_api_error(page, console, case):
    console.allow(r"status of 4\d\d")  # the browser logs the rejected request itself
    open_app(page, "#/studio")
    limit = page.evaluate("document.querySelector('#gen-count').textContent.split('/')[1].replace(/\\D/g, '')")
    text = "" if case == "empty" else "a" * (int(limit) + 1)
    page.fill("#gen-text", text)
    if case == "too_long":
        # Over the server's limit: Generate is disabled and the page says why (no request sent).
        assert "over" in page.get_attribute("#gen-count", "class")
        assert page.is_disabled("#gen-submit")
        assert "limit" in page.inner_text("#gen-over")
        shot(page, "studio-error")
        return
    with page.expect_response(lambda r: r.url.endswith("/api/generate")) as resp:
        page.click("#gen-submit")
    response = resp.value
    assert 400 <= response.status < 500
    body = response.json()
    message = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else None
    page.wait_for_selector("#gen-error:not([hidden])")
    shown = page.inner_text("#gen-error")
    if message:
        assert message in shown
    assert "Request rejected" in shown or "rejected" in shown.lower()
    assert page.is_hidden("#gen-result")


def test_dark_mode_toggles_and_persists(page):
    open_app(page)
    bg = "getComputedStyle(document.body).backgroundColor"
    light = page.evaluate(bg)
    page.click("#theme-toggle")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    dark = page.evaluate(bg)
    assert dark != light
    page.reload()
    page.wait_for_selector("html[data-ready]")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert page.evaluate(bg) == dark
    page.locator("#voice-grid .voice-card").first.wait_for()
    shot(page, "characters-dark")
    page.click("#theme-toggle")
    assert page.evaluate(bg) == light


def test_phone_viewport_has_no_horizontal_scroll(browser, base_url, console):
    context, page = new_page(browser, base_url, console, viewport={"width": 375, "height": 812},
                             is_mobile=True, has_touch=True, device_scale_factor=2)
    try:
        for route in ["#/characters", "#/studio", "#/create", "#/conversation"]:
            open_app(page, route)
            page.wait_for_selector(f"#view-{route[2:]}:not([hidden])")
            if route == "#/characters":
                page.locator("#voice-grid .voice-card").first.wait_for()
            width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], f"{route}: horizontal scroll {width}"
            shot(page, f"phone-{route[2:]}")
    finally:
        context.close()
    assert console.unexpected() == []


def test_create_voice_from_uploaded_wav(page, console, speech_wav):
    name = f"Test Narrator {uuid.uuid4().hex[:6]}"
    open_app(page, "#/create")
    # Without audio the API refuses and the page shows why.
    console.allow(r"status of 4\d\d")
    page.fill("#cv-name", name)
    page.click("#cv-submit")
    page.wait_for_selector("#cv-error:not([hidden])")
    assert "audio" in page.inner_text("#cv-error").lower()
    shot(page, "create-voice-error")

    page.set_input_files("#cv-file", str(speech_wav))
    page.wait_for_selector("#cv-preview:not([hidden])")
    page.fill("#cv-transcript", "This is my reference voice, recorded for the studio test.")
    page.select_option("#cv-gender", "female")
    page.fill("#cv-style", "narration")
    page.fill("#cv-language", "en")
    page.fill("#cv-description", "Made by the browser test.")
    with page.expect_response(lambda r: r.url.endswith("/api/voices") and r.request.method == "POST") as resp:
        page.click("#cv-submit")
    assert resp.value.status == 201, resp.value.text()
    page.wait_for_selector("#cv-success:not([hidden])")
    shot(page, "create-voice-done")
    page.goto("/#/characters")
    page.fill("#f-search", name)
    card = page.locator("#voice-grid .voice-card", has_text=name)
    card.wait_for()
    assert "Your voice" in card.inner_text()

    # A user voice can be deleted again (after a confirmation dialog).
    page.once("dialog", lambda d: d.accept())
    card.get_by_role("button", name=f"Delete {name}").click()
    card.wait_for(state="detached")


def test_record_voice_with_fake_microphone(base_url, speech_wav, console, playwright_instance):
    browser = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=[
        *CHROMIUM_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={speech_wav}"])
    try:
        context, page = new_page(browser, base_url, console, viewport={"width": 1280, "height": 860})
        context.grant_permissions(["microphone"], origin=base_url)
        open_app(page, "#/create")
        page.click("#cv-record")
        page.wait_for_function("document.querySelector('#cv-record').getAttribute('aria-pressed') === 'true'")
        page.wait_for_timeout(2500)
        page.click("#cv-record")
        page.wait_for_selector("#cv-preview:not([hidden])")
        assert "recording.wav" in page.inner_text("#cv-clip-name")
        page.fill("#cv-name", "Mic Voice")
        page.fill("#cv-transcript", "This is my reference voice, recorded for the studio test.")
        with page.expect_response(lambda r: r.url.endswith("/api/voices") and r.request.method == "POST") as resp:
            page.click("#cv-submit")
        assert resp.value.status == 201, resp.value.text()
        page.wait_for_selector("#cv-success:not([hidden])")
        context.close()
    finally:
        browser.close()
    assert console.unexpected() == []


def test_conversation_renders_to_one_file(page):
    open_app(page, "#/conversation")
    page.locator("#turns .turn").first.wait_for()
    voices = page.eval_on_selector_all("#conv-voice-1 option", "os => os.map(o => o.value)")
    page.select_option("#conv-voice-1", voices[1] if len(voices) > 1 else voices[0])
    page.click("#turn-add")
    assert page.locator("#turns .turn").count() == 3
    page.locator("#turns textarea").nth(2).fill("Let's render all three turns together.")
    page.get_by_role("button", name="Move up turn 3").click()
    assert page.locator("#turns textarea").nth(1).input_value() == "Let's render all three turns together."
    page.get_by_role("button", name="Remove turn 3").click()
    assert page.locator("#turns .turn").count() == 2
    page.click("#conv-submit")
    page.wait_for_selector("#conv-result:not([hidden])", timeout=60_000)
    assert audio_duration(page, "#conv-audio") > 0.5
    shot(page, "conversation-result")


def test_queue_full_shows_retry_after(page, console):
    """A 429 from the queue is explained with its Retry-After (simulated: filling the real queue is slow)."""
    console.allow(r"status of 429")
    body = '{"error": {"message": "the queue is full (100 pending)", "type": "rate_limit_error", "code": "queue_full"}}'
    page.route("**/api/generate", lambda route: route.fulfill(
        status=429, headers={"Retry-After": "7", "Content-Type": "application/json"}, body=body))
    open_app(page, "#/studio")
    page.fill("#gen-text", "Hello there.")
    page.click("#gen-submit")
    page.wait_for_selector("#gen-error:not([hidden])")
    shown = page.inner_text("#gen-error")
    assert "Queue full" in shown and "the queue is full" in shown and "7 s" in shown


def test_api_key_prompt_when_auth_required(browser, tmp_path, console):
    from .conftest import start_server

    console.allow(r"status of 401")
    with start_server(tmp_path, {"server": {"api_keys": ["web-test-key-123"]}}) as server:
        context, page = new_page(browser, server.url, console, viewport={"width": 1280, "height": 860})
        open_app(page)
        page.wait_for_selector("#key-bar:not([hidden])")
        page.wait_for_selector("#voices-error:not([hidden])")
        assert "API key" in page.inner_text("#voices-error")
        shot(page, "auth-required")
        page.fill("#api-key", "web-test-key-123")
        page.click("#key-bar button[type=submit]")
        page.locator("#voice-grid .voice-card").first.wait_for()
        assert page.is_hidden("#voices-error")
        assert page.evaluate("JSON.parse(localStorage.getItem('echoforge.apiKey'))") == "web-test-key-123"
        # The key is sent with generation requests and audio downloads too.
        page.goto("/#/studio")
        page.wait_for_selector("html[data-ready]")
        page.fill("#gen-text", "Authorised speech.")
        page.click("#gen-submit")
        page.wait_for_selector("#gen-result:not([hidden])", timeout=30_000)
        assert audio_duration(page, "#gen-audio") > 0.3
        context.close()
    assert console.unexpected() == []


def test_every_control_has_a_label_and_status_is_announced(page):
    open_app(page)
    unlabeled = page.evaluate("""() => Array.from(document.querySelectorAll('input, select, textarea, button'))
        .filter(el => el.type !== 'hidden')
        .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                      && !el.getAttribute('aria-labelledby') && !(el.textContent || '').trim())
        .map(el => el.id || el.outerHTML.slice(0, 80))""")
    assert unlabeled == []
    for region in ["#gen-status", "#conv-status", "#toast", "#voice-count"]:
        live = page.eval_on_selector(region, "el => el.getAttribute('aria-live') || el.getAttribute('role')")
        assert live in ("polite", "status", "assertive", "alert"), region
    # Keyboard: the first Tab reaches the skip link, which moves focus to the main content.
    page.goto("/#/studio")
    page.reload()  # a fresh load: focus starts at the top of the document
    page.wait_for_selector("#view-studio:not([hidden])")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    assert page.is_visible("#view-studio"), "the skip link keeps the current page"


# ------------------------------------------------------------ generation panel, badges, validation, recent


def test_ctrl_enter_while_generating_sends_one_request(page):
    open_app(page, "#/studio")
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and r.url.endswith("/api/generate") else None)
    page.fill("#gen-text", "One generation at a time, please.")
    page.focus("#gen-text")
    for _ in range(3):
        page.keyboard.press("Control+Enter")
    page.wait_for_selector("#gen-result:not([hidden])", timeout=30_000)
    page.wait_for_timeout(300)
    assert len(posts) == 1
    assert "Done" in page.inner_text("#gen-status")


def test_fallback_mode_is_said_and_sampling_controls_disabled(page):
    open_app(page)
    page.locator("#voice-grid .voice-card").first.wait_for()
    note = page.locator("#voice-grid .voice-card").first.locator(".fallback-note")
    assert "fallback engine" in note.inner_text() and "espeak" in note.inner_text()
    page.goto("/#/studio")
    page.wait_for_selector("#view-studio:not([hidden])")
    assert "Fallback mode" in page.inner_text("#gen-engine-note")
    for sel in ["#gen-temperature", "#gen-topk", "#gen-seed", "#conv-temperature", "#conv-topk", "#conv-seed"]:
        assert page.is_disabled(sel), sel
    assert "ignores temperature, top-k and seed" in page.inner_text("#gen-sampling-hint")
    with page.expect_request(lambda r: r.url.endswith("/api/generate")) as req:
        page.fill("#gen-text", "Hello.")
        page.click("#gen-submit")
    body = req.value.post_data_json
    assert not {"temperature", "topk", "seed"} & set(body)


def test_tone_preset_keeps_the_users_slider_values(page):
    open_app(page, "#/studio")
    page.evaluate("""() => { for (const id of ['gen-temperature', 'gen-topk']) document.getElementById(id).disabled = false; }""")
    page.fill("#gen-temperature", "1.3")  # the user's own value (range inputs accept fill)
    page.dispatch_event("#gen-temperature", "input")
    page.locator("#gen-presets label", has_text="Calm").click()
    assert page.input_value("#gen-temperature") == "1.3"
    assert "Kept your settings" in page.inner_text("#gen-preset-note")
    page.click("#gen-preset-apply")
    assert page.input_value("#gen-temperature") == "0.5"


def test_header_badge_says_when_the_server_is_down(page, console):
    console.allow(r"ERR_FAILED")  # the aborted health requests
    page.goto("/?health_ms=300#/studio")
    page.wait_for_selector("html[data-ready]")
    assert "fallback" in page.inner_text("#engine-badge")
    page.route("**/api/health", lambda route: route.abort())
    page.wait_for_function("document.querySelector('#engine-badge').dataset.state === 'offline'", timeout=5000)
    assert "offline" in page.inner_text("#engine-badge").lower()
    page.unroute("**/api/health")
    page.wait_for_function("document.querySelector('#engine-badge').dataset.state === 'fallback'", timeout=5000)


def test_validation_errors_use_turn_numbers_and_mark_the_field(page, console):
    console.allow(r"status of 4\d\d")
    open_app(page, "#/conversation")
    page.locator("#turns .turn").first.wait_for()
    page.click("#turn-add")
    page.locator("#turns textarea").nth(2).fill("\x01\x02")  # control characters only
    page.click("#conv-submit")
    page.wait_for_selector("#conv-error:not([hidden])")
    shown = page.inner_text("#conv-error")
    assert "turn 3" in shown.lower() and "turns.2" not in shown
    assert page.locator("#turns textarea").nth(2).get_attribute("aria-invalid") == "true"
    assert page.locator("#turns textarea").nth(0).get_attribute("aria-invalid") is None


def test_fastapi_style_messages_are_human(page, console):
    console.allow(r"status of 422")
    body = '{"detail": [{"loc": ["body", "turns", 3, "text"], "msg": "Field required", "type": "missing"}]}'
    page.route("**/api/conversations", lambda route: route.fulfill(status=422, body=body, content_type="application/json"))
    open_app(page, "#/conversation")
    page.locator("#turns .turn").first.wait_for()
    page.click("#conv-submit")
    page.wait_for_selector("#conv-error:not([hidden])")
    shown = page.inner_text("#conv-error")
    assert "Turn 4 text" in shown and "turns.3" not in shown


def test_over_long_text_disables_generate(page):
    open_app(page, "#/studio")
    limit = page.evaluate("fetch('/api/health').then(r => r.json()).then(h => h.limits.max_text_chars)")
    page.fill("#gen-text", "a" * (limit + 1))
    assert page.is_disabled("#gen-submit")
    page.fill("#gen-text", "a" * limit)
    assert page.is_enabled("#gen-submit")


def test_streamed_result_replays_from_recent_after_reload(page):
    open_app(page, "#/studio")
    page.fill("#gen-text", "Streamed and kept.")
    page.locator("label", has_text="Stream live").click()
    page.click("#gen-submit")
    page.wait_for_selector("#gen-result:not([hidden])", timeout=30_000)
    page.locator("#history li").first.get_by_role("button", name="Load generation").wait_for()
    page.reload()
    page.wait_for_selector("html[data-ready]")
    page.locator("#history li").first.get_by_role("button", name="Load generation").click()
    page.wait_for_selector("#gen-result:not([hidden])")
    assert "history" in page.inner_text("#gen-status")
    duration = page.eval_on_selector("#gen-audio", """(a) => new Promise((r) => {
        if (a.readyState >= 1) return r(a.duration);
        a.addEventListener('loadedmetadata', () => r(a.duration), {once: true}); setTimeout(() => r(0), 8000); })""")
    assert duration > 0.3


def test_audio_players_have_accessible_names(page):
    open_app(page)
    unnamed = page.evaluate("""() => Array.from(document.querySelectorAll('audio'))
        .filter(a => !a.getAttribute('aria-label') && !a.getAttribute('aria-labelledby')).map(a => a.id)""")
    assert unnamed == []


def test_short_voice_clip_warns(page, tmp_path):
    import numpy as np
    import soundfile as sf

    clip = tmp_path / "short.wav"
    sf.write(clip, (0.1 * np.sin(np.arange(int(2.4 * 16000)) / 10)).astype("float32"), 16000)
    open_app(page, "#/create")
    page.set_input_files("#cv-file", str(clip))
    page.wait_for_selector("#cv-clip-warning:not([hidden])")
    assert "5–30 s" in page.inner_text("#cv-clip-warning")


# ------- API docs offline, accessibility, voice and key forms, long text


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
