"""Fallback engines serve several requests at once, within a bounded pool and a bounded wait queue.

In-process: the synthesis service's slot gate (FIFO, bounded waiting, 503 past it, cancellation
frees a place). Real server: N concurrent /v1/audio/speech requests and N tasks are inside the
espeak engine together (a barrier in a probe engine proves it), and overflow is a 503 with
Retry-After. No timing assertions: waits are for conditions, with generous deadlines.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import AppServer, assert_error, wait_task, wait_until
from probe_engine import ProbeEspeakEngine

from echoforge.config import load_settings
from echoforge.engines.base import BaseEngine, SynthesisRequest
from echoforge.server.errors import Unavailable
from echoforge.server.services.slots import Cancelled, GateFull, SlotGate
from echoforge.server.services.synthesis import SynthesisService
from echoforge.server.services.voices import VoiceStore


# ------------------------------------------------------------------------------ the gate
def test_slot_gate_is_fifo_and_bounded():
    gate = SlotGate(2, max_waiting=2)
    a, b = gate.reserve(admit=True), gate.reserve(admit=True)
    assert a.granted.is_set() and b.granted.is_set() and gate.in_use == 2
    c, d = gate.reserve(admit=True), gate.reserve(admit=True)
    assert not c.granted.is_set() and gate.waiting == 2
    with pytest.raises(GateFull):
        gate.reserve(admit=True)
    extra = gate.reserve()  # not admission-controlled (queue workers): always queued
    assert gate.waiting == 3
    gate.release(c)  # a waiting ticket withdraws
    gate.release(c)  # idempotent
    assert gate.waiting == 2
    gate.release(a)
    assert d.granted.is_set() and not extra.granted.is_set()  # first come, first served
    gate.release(b)
    assert extra.granted.is_set() and gate.in_use == 2 and gate.waiting == 0
    gate.release(d)
    gate.release(extra)
    assert gate.in_use == 0


def test_slot_gate_wait_can_be_stopped():
    gate = SlotGate(1)
    held = gate.reserve()
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled), gate.hold(stop.is_set):
        pass
    assert gate.waiting == 0 and gate.in_use == 1
    gate.release(held)
    with gate.hold():
        assert gate.in_use == 1
    assert gate.in_use == 0


# ------------------------------------------------------------------------------ the service
class GatedEngine(BaseEngine):
    """A fallback engine whose calls block until ``release`` is set; counts calls in flight."""

    name = "gated"
    is_fallback = True
    sample_rate = 8000
    max_concurrency = 2

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def stream(self, request):
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.started.release()
        try:
            assert self.release.wait(60)
            yield np.full(16, len(request.text) / 100, dtype=np.float32)
        finally:
            with self._lock:
                self.in_flight -= 1


async def _until(cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_service_runs_the_engine_concurrency_and_refuses_past_the_wait_queue(tmp_path):
    settings = load_settings(data_dir=tmp_path, server={"workers": 1, "fallback_max_waiting": 1})
    engine = GatedEngine()
    service = SynthesisService(engine, VoiceStore(tmp_path), settings)
    try:
        assert service.concurrency == 2  # the engine's, not server.workers
        streams = [service.stream(SynthesisRequest(text=f"request {i}")) for i in range(5)]
        running = [asyncio.ensure_future(s.__anext__()) for s in streams[:2]]
        for _ in range(2):
            await asyncio.to_thread(engine.started.acquire)
        waiting = asyncio.ensure_future(streams[2].__anext__())
        await _until(lambda: service._slots.waiting == 1)
        # The wait queue (1) is full: the next stream is refused at once, 503 + Retry-After.
        with pytest.raises(Unavailable) as info:
            await streams[3].__anext__()
        assert info.value.status == 503 and info.value.code == "server_overloaded"
        assert info.value.retry_after is not None and info.value.retry_after >= 1
        assert service.stats.rejected == 1
        # A queued stream whose client goes away gives its place back.
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await _until(lambda: service._slots.waiting == 0)
        late = asyncio.ensure_future(streams[4].__anext__())
        await _until(lambda: service._slots.waiting == 1)
        # Queue workers are never refused: they wait for a slot like everyone else.
        worker = asyncio.ensure_future(asyncio.to_thread(service.synthesize, SynthesisRequest(text="task")))
        await _until(lambda: service._slots.waiting == 2)
        engine.release.set()
        for fut in (*running, late):
            assert (await fut).size == 16
        assert (await worker).size == 16
        for s in streams:
            await s.aclose()
        assert engine.max_in_flight == 2  # never more than the engine's concurrency
        await _until(lambda: service._slots.in_use == 0 and service._slots.waiting == 0)
    finally:
        engine.release.set()
        service.close()


async def test_csm_like_engines_use_their_scheduler_slots(tmp_path):
    """CSM declares its scheduler's slots (max_concurrency) and waits in csm.max_waiting."""
    engine = GatedEngine()
    engine.is_fallback = False
    settings = load_settings(data_dir=tmp_path, server={"workers": 1}, csm={"max_waiting": 5})
    service = SynthesisService(engine, VoiceStore(tmp_path), settings)
    try:
        assert service.concurrency == 2 and service.max_waiting == 5
    finally:
        service.close()
    engine.max_concurrency = 1  # an engine that declares nothing: server.workers
    service = SynthesisService(engine, VoiceStore(tmp_path), load_settings(data_dir=tmp_path, server={"workers": 3}))
    try:
        assert service.concurrency == 3
    finally:
        service.close()


# ------------------------------------------------------------------------------ real servers
N = 4


def _speech(client, text):
    return client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": text, "response_format": "wav"})


def probe_engine(probe_dir: Path, parties: int, concurrency: int) -> ProbeEspeakEngine:
    engine = ProbeEspeakEngine(max_concurrency=concurrency)
    engine.dir, engine.parties = probe_dir, parties
    return engine


@pytest.fixture(scope="module")
def probe_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("probe-server")
    engine = probe_engine(data, N, N)
    with AppServer(data, engine, {"server": {"workers": 1, "fallback_concurrency": N}}).start() as server:
        yield server


def test_concurrent_speech_requests_overlap_in_the_engine(probe_server):
    # Each request waits in the engine until N are inside it together: all N succeeding proves
    # they were served at once (one engine job at a time would break the barrier).
    with probe_server.client() as client, ThreadPoolExecutor(N) as pool:
        responses = list(pool.map(lambda i: _speech(client, f"overlapspeech request number {i}."), range(N)))
    for r in responses:
        assert r.status_code == 200, r.text
        assert r.content[:4] == b"RIFF" and len(r.content) > 1000
    assert int((Path(probe_server.data_dir) / "max-speech").read_text()) == N


def test_concurrent_tasks_overlap_in_the_engine(probe_server):
    with probe_server.client() as client:
        ids = []
        for i in range(N):
            r = client.post("/api/generate", json={"text": f"overlaptasks number {i}.", "voice": "atlas", "format": "wav"})
            assert r.status_code == 202, r.text
            ids.append(r.json()["task_id"])
        for task_id in ids:
            assert wait_task(client, task_id, timeout=120)["status"] == "done"
    assert int((Path(probe_server.data_dir) / "max-tasks").read_text()) == N


def test_overflow_is_503_with_retry_after(tmp_path):
    engine = probe_engine(tmp_path, 1, 1)
    server = AppServer(tmp_path, engine, {"server": {"fallback_concurrency": 1, "fallback_max_waiting": 0}}).start()
    try:
        with server.client() as client, ThreadPoolExecutor(1) as pool:
            held = pool.submit(_speech, client, "holdone this request keeps the only slot.")
            started = tmp_path / "started-one"
            wait_until(lambda: started.exists() or held.done(), what="the held request inside the engine")
            assert not held.done(), held.result().text
            refused = _speech(client, "This one finds the engine busy.")
            err = assert_error(refused, 503)
            assert err["code"] == "server_overloaded" and err["type"] == "server_error"
            assert int(refused.headers["Retry-After"]) >= 1
            (tmp_path / "release").touch()
            assert held.result(timeout=60).status_code == 200
            assert _speech(client, "After the release there is room again.").status_code == 200
    finally:
        (tmp_path / "release").touch()
        server.stop()
