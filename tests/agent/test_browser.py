"""The agent page in Debian's Chromium with a fake microphone (a Piper WAV): ask, get an answer back.

Stretch test: a real uvicorn server (in a thread, the session's agent models reused) serves
``/agent.html``; Chromium's fake capture device plays the question in a loop into
``getUserMedia`` (echo cancellation on), the page streams PCM over ``WS /api/agent`` and shows the
transcript, the retrieved source, the spoken answer and the latency row.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (browser test)")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.integration  # real Whisper, llama.cpp, Silero and espeak behind a real server


@pytest.fixture
def server(models, espeak, tmp_path):
    from _servers import uvicorn_thread

    from echoforge.config import load_settings
    from echoforge.server.app import create_app

    app = create_app(load_settings(data_dir=tmp_path / "data", engine="espeak"), engine=espeak)
    app.state.agent_models = models  # loaded once per test session
    with uvicorn_thread(app, ws="websockets-sansio") as (url, _):
        yield url


def test_agent_page_answers_a_spoken_question(server, say, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    wav = tmp_path / "mic.wav"
    # The fake device loops the file: the question, then 10 s of silence for the agent to answer
    # (the next loop may talk over it: that is a barge-in, also fine here).
    audio = np.concatenate([say("What port does the server use?"), np.zeros(160_000, np.float32)])
    sf.write(wav, (audio * 32767).astype(np.int16), 16_000, subtype="PCM_16")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--autoplay-policy=no-user-gesture-required",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}",
            ],
        )
        try:
            context = browser.new_context()
            context.grant_permissions(["microphone"], origin=server)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{server}/agent.html")
            page.click("#start")
            # What happened and in which order, at any speed: the question's words in the user's
            # line(s) (a slow machine's VAD may cut the question into two turns, and the first
            # pass of the loop may be cut because the device starts before the socket opens),
            # then retrieval from server.md, then an answer from the agent citing it. How many
            # turns it took is not asserted.
            page.wait_for_function(
                """() => {
                  const lis = [...document.querySelectorAll('#log li')];
                  const users = lis.filter(li => li.classList.contains('user'));
                  if (!/port/i.test(users.map(li => li.textContent).join(' '))) return false;
                  const first = lis.indexOf(users[0]);
                  const kb = lis.findIndex((li, i) => i > first && li.classList.contains('meta')
                    && li.textContent.includes('knowledge base: ') && li.textContent.includes('server.md'));
                  return kb >= 0 && lis.some((li, i) => i > kb && li.classList.contains('agent')
                    && li.textContent.includes('server.md'));
                }""",
                timeout=120_000,
            )
            # A reply that made sound has a latency row with its voice-to-voice time (ms).
            page.wait_for_function(
                "[...document.querySelectorAll('#latency tr')].some(tr => Number(tr.lastElementChild.textContent) > 0)",
                timeout=60_000,
            )
            page.click("#stop")
            assert page.get_attribute("#state", "data-state") == "stopped"
            assert not errors, errors
        finally:
            browser.close()
