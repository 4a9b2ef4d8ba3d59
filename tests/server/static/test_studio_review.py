"""Studio items of the review (issue 16), in a real browser against the espeak fallback server."""

from __future__ import annotations

import pytest

from .conftest import open_app

pytestmark = pytest.mark.integration


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
