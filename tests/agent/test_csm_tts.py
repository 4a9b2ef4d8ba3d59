"""The agent speaks through CSM loaded from a directory laid out like the real `sesame/csm-1b`
download, and a barge-in drops its row from the scheduler at once (tiny random weights)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("transformers")

from tests.csm.tiny_models import build_tiny_model, save_real_layout  # noqa: E402

pytestmark = pytest.mark.slow  # a tiny CSM built and run on the CPU (about a minute on a busy 2-core box)


@pytest.fixture(scope="module")
def csm_engine(tmp_path_factory):
    from echoforge.config import load_settings
    from echoforge.engines import create_engine

    path = save_real_layout(build_tiny_model(), tmp_path_factory.mktemp("agent-csm") / "csm-1b")
    settings = load_settings(engine="csm", device="cpu", csm={"model": str(path), "watermark": False, "chunk_frames": 4})
    return create_engine(settings)


def _tts(engine):
    from echoforge.agent.config import AgentSettings
    from echoforge.agent.pipeline import Conversation, TTSProcessor

    proc = TTSProcessor(engine, Conversation(), AgentSettings())
    out = []

    async def record(frame, direction=None):
        out.append(frame)

    proc.push_frame = record
    return proc, out


async def test_agent_sentence_is_spoken_by_csm(csm_engine):
    from echoforge.agent.frames import TTSTextFrame
    from echoforge.agent.processors import DOWN

    assert csm_engine.name == "csm" and csm_engine.generator.ckpt.layout == "transformers"
    proc, out = _tts(csm_engine)
    await proc.process_frame(TTSTextFrame(text="hello world", turn_id=1), DOWN)
    audio = [f for f in out if getattr(f, "audio", None) is not None]
    assert audio[-1].last and sum(f.audio.size for f in audio) > 0
    assert all(f.sample_rate == 24_000 for f in audio)


async def test_barge_in_drops_the_csm_row(csm_engine):
    from echoforge.agent.frames import TTSTextFrame
    from echoforge.agent.processors import DOWN

    sched = csm_engine.generator.scheduler
    proc, out = _tts(csm_engine)
    before = sched.stats["frames"]
    # A sentence long enough that its own audio budget (~52 s, 650 frames) is far beyond the check below.
    text = "how are you today, " * 20
    task = asyncio.ensure_future(proc.process_frame(TTSTextFrame(text=text, turn_id=2), DOWN))
    for _ in range(500):  # the first audio chunk arrives
        if out:
            break
        await asyncio.sleep(0.01)
    assert out
    task.cancel()  # what an interruption does to the TTS stage
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(300):
        if sched.active == 0:
            break
        await asyncio.sleep(0.01)
    assert sched.active == 0
    # The sentence's budget is ~52 s (650 frames); the row stopped a few frames after the barge-in.
    assert sched.stats["frames"] - before < 200
    assert np.concatenate([f.audio for f in out]).size > 0
