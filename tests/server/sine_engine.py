"""A small deterministic test engine: one tone burst per word, optional delay, batching and failures.

Configured by environment variables (set by the server launcher in tests):
``SINE_DELAY`` seconds per chunk (default 0), ``SINE_BATCH=1`` adds ``synthesize_batch``,
texts containing ``transient-failure`` fail on their first attempt in a process.
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
        self.prompts_encoded = 0
        self.batch_sizes: list[int] = []

    @classmethod
    def from_settings(cls, settings) -> SineEngine:
        engine = BatchSineEngine() if os.environ.get("SINE_BATCH") == "1" else cls()
        return engine

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
            chunk = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[: max(0, max_samples - produced)]
            if chunk.size == 0:
                return
            produced += chunk.size
            yield chunk


class BatchSineEngine(SineEngine):
    def synthesize_batch(self, requests: list[SynthesisRequest]) -> list[np.ndarray]:
        self.batch_sizes.append(len(requests))
        if self.delay:
            time.sleep(self.delay * 4)
        saved, self.delay = self.delay, 0.0
        try:
            return [self.synthesize(r) for r in requests]
        finally:
            self.delay = saved
