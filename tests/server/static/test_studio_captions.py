"""Studio captions in Chromium against the real espeak-ng server: a WebVTT <track> on the player,
the current word highlighted as the audio position moves, SRT / VTT downloads."""

from __future__ import annotations

import pytest

from .conftest import open_app, shot

pytestmark = pytest.mark.integration

TEXT = "Good morning, how are you today? The train leaves at seven in the evening."


def _seek(page, seconds: float) -> None:
    """Move the player to ``seconds`` and wait until the page handled the seek (no playback, no clock)."""
    page.eval_on_selector(
        "#gen-audio",
        """(a, t) => new Promise((resolve) => {
        a.addEventListener('seeked', () => setTimeout(resolve, 0), {once: true});
        a.currentTime = t;
    })""",
        seconds,
    )


def test_generated_speech_has_captions_highlight_and_downloads(page):
    open_app(page, "#/studio")
    page.fill("#gen-text", TEXT)
    page.click("#gen-submit")
    page.wait_for_selector("#gen-result:not([hidden])", timeout=30_000)
    page.wait_for_selector("#gen-words:not([hidden]) .w")
    # The <track>: WebVTT from the task's word timings, its cues loaded (one per sentence here).
    assert page.get_attribute("#gen-audio track", "kind") == "captions"
    assert page.get_attribute("#gen-audio track", "src").startswith("blob:")
    page.wait_for_function("document.querySelector('#gen-audio track').track.cues?.length === 2")
    cues = page.eval_on_selector(
        "#gen-audio track", "(t) => Array.from(t.track.cues).map((c) => [c.startTime, c.endTime, c.text])"
    )
    assert [c[2] for c in cues] == ["Good morning, how are you today?", "The train leaves at seven in the evening."]
    # Every word of the text, in order; the one at the audio position is highlighted.
    assert page.locator("#gen-words .w").all_inner_texts() == TEXT.split()
    words = page.evaluate("fetch(document.querySelector('#gen-vtt').href).then((r) => r.text())")
    assert words.startswith("WEBVTT")
    second = cues[1][0]
    _seek(page, second + 0.02)  # the start of "The"
    assert page.inner_text("#gen-words .w.current") == "The"
    assert page.get_attribute("#gen-words .w.current", "aria-current") == "true"
    assert page.inner_text("#gen-caption").replace("\n", " ") == "The train leaves at seven in the evening."
    _seek(page, 0.05)
    assert page.inner_text("#gen-words .w.current") == "Good"
    assert page.inner_text("#gen-caption") == "Good morning, how are you today?"
    shot(page, "studio-captions")
    # Downloads: SRT and VTT files of the same cues.
    assert page.get_attribute("#gen-srt", "download").endswith(".srt")
    srt = page.evaluate("fetch(document.querySelector('#gen-srt').href).then((r) => r.text())")
    assert srt.startswith("1\n00:00:00,") and "Good morning, how are you today?" in srt
    assert page.get_attribute("#gen-vtt", "download").endswith(".vtt")
