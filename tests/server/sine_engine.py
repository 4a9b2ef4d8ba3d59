"""A small deterministic test engine: one tone burst per word, optional delay and failures.

Configured by environment variables (set by the server launcher in tests):
``SINE_DELAY`` seconds per chunk (default 0),
``SINE_GATE=DIR`` makes every chunk wait until the file ``DIR/open`` exists (the engine touches
``DIR/blocked`` while it waits: a test in another process knows a task is mid-synthesis),
texts containing ``transient-failure`` fail on their first attempt in a process.
In-process tests use :class:`GatedSineEngine` instead, driven through its methods.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import numpy as np

from echoforge.engines.base import BaseEngine, Segment, SynthesisRequest, VoiceInfo

_failures_seen: set[str] = set()


class SineEngine(BaseEngine):
    name = "sine"
    is_fallback = False  # behaves like a context-aware engine, so voice prompts are exercised
    sample_rate = 24_000
    model = "sine-test"
    description = "deterministic sine test engine"

    def __init__(self) -> None:
        self.delay = float(os.environ.get("SINE_DELAY", "0"))
        self.gate_dir = os.environ.get("SINE_GATE")
        self.prompts_encoded = 0

    @classmethod
    def from_settings(cls, settings) -> SineEngine:
        return cls()

    def voices(self) -> list[VoiceInfo]:
        return [VoiceInfo(id="sine", name="Sine")]

    def encode_prompt(self, segment: Segment) -> Segment:
        self.prompts_encoded += 1
        audio = np.asarray(segment.audio, dtype=np.float32)
        return Segment(speaker=segment.speaker, text=segment.text, audio=audio[:2400], sample_rate=segment.sample_rate)

    def stream(self, request: SynthesisRequest) -> Iterator[np.ndarray]:
        if "transient-failure" in request.text and request.text not in _failures_seen:
            _failures_seen.add(request.text)
            raise RuntimeError("simulated transient engine failure")
        freq = 220.0 * (1 + request.speaker % 4)
        n = int(0.15 * self.sample_rate / request.speed)
        t = np.arange(n, dtype=np.float32) / self.sample_rate
        max_samples = int(request.max_audio_length_ms * self.sample_rate / 1000)
        produced = 0
        for _word in request.text.split():
            if self.delay:
                time.sleep(self.delay)
            if self.gate_dir and _gated(request):
                _wait_for_file_gate(self.gate_dir)
            chunk = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[: max(0, max_samples - produced)]
            if chunk.size == 0:
                return
            produced += chunk.size
            yield chunk


def _gated(request: SynthesisRequest) -> bool:
    """One-word texts (the server's warm-up, "Ready.") pass the gates, so a gated server can start."""
    return len(request.text.split()) > 1


def _wait_for_file_gate(gate_dir: str) -> None:
    from pathlib import Path

    gate = Path(gate_dir)
    while not (gate / "open").exists():
        (gate / "blocked").touch()
        time.sleep(0.02)


class GatedSineEngine(SineEngine):
    """The sine engine whose progress the test drives: each word's chunk waits for a permit.

    ``allow(n)`` lets ``n`` more chunks through (``open()`` all of them from now on);
    ``wait_blocked(k)`` returns once ``k`` chunk requests are waiting at the gate — "the engine is
    busy with a task right now" is then true by construction, at any machine speed.
    """

    def __init__(self) -> None:
        import threading

        super().__init__()
        self._cond = threading.Condition()
        self._permits = 0
        self._open = False
        self.blocked = 0  # chunk requests waiting at the gate now
        self.texts: list[str] = []  # texts the engine started, in order

    def allow(self, n: int = 1) -> None:
        with self._cond:
            self._permits += n
            self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def wait_blocked(self, k: int = 1, timeout: float = 120.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.blocked >= k, timeout):
                raise AssertionError(f"engine never had {k} chunk(s) waiting at the gate")

    def stream(self, request: SynthesisRequest) -> Iterator[np.ndarray]:
        if not _gated(request):
            yield from super().stream(request)
            return
        self.texts.append(request.text)
        for chunk in super().stream(request):
            with self._cond:
                self.blocked += 1
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._open or self._permits > 0)
                self.blocked -= 1
                if not self._open:
                    self._permits -= 1
            yield chunk
