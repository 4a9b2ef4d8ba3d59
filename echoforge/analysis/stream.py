"""Incremental analysis for live audio: feed chunks, get an updated estimate every N frames.

Work is amortised like the training loss: the analyzer runs once every ``update_every``
Mimi frames (default 16 × 80 ms = 1.28 s) over a sliding window of the most recent audio,
so per-chunk cost stays flat however long the stream runs (see benchmarks/analysis_speed.py).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from echoforge.analysis.emotion import Emotion, estimate_emotion
from echoforge.analysis.prosody import Prosody, analyze_prosody
from echoforge.csm.rates import FRAME_MS

MIMI_FRAME_S = FRAME_MS / 1000


class StreamAnalyzer:
    """Call :meth:`push` with audio chunks; it returns a new (prosody, emotion) when an update runs."""

    def __init__(self, sample_rate: int, update_every: int = 16, window_s: float = 3.0) -> None:
        if update_every < 1:
            raise ValueError("update_every must be >= 1")
        self.sample_rate = sample_rate
        self.update_samples = int(update_every * MIMI_FRAME_S * sample_rate)
        self.window = deque(maxlen=int(window_s * sample_rate))
        self._since_update = 0
        self.updates = 0
        self.latest: tuple[Prosody, Emotion] | None = None

    def push(self, chunk: np.ndarray) -> tuple[Prosody, Emotion] | None:
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        self.window.extend(chunk.tolist())
        self._since_update += chunk.size
        if self._since_update < self.update_samples:
            return None
        self._since_update %= self.update_samples
        audio = np.fromiter(self.window, dtype=np.float32, count=len(self.window))
        prosody = analyze_prosody(audio, self.sample_rate)
        self.latest = (prosody, estimate_emotion(prosody))
        self.updates += 1
        return self.latest
