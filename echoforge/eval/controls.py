"""Negative-control "engines" for the evaluation suite: they must rank last, flagged.

``noise`` speaks white noise and ``silence`` near-silence, for as long as a person would take
to say the text. They run in every ``echoforge eval`` report (``--no-controls`` drops them) so
the sanity gates are visibly exercised: if a control ever ranks above a real engine, the
metrics are broken.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from echoforge.engines.base import EngineInfo

CONTROLS = ("noise", "silence")


class ControlEngine:
    """White noise (``kind="noise"``) or silence (``kind="silence"``), ~0.35 s per word."""

    is_fallback = True
    max_concurrency = 1

    def __init__(self, kind: str = "noise", sample_rate: int = 16_000, seed: int = 0):
        if kind not in CONTROLS:
            raise ValueError(f"unknown control {kind!r} (controls: {', '.join(CONTROLS)})")
        self.kind, self.sample_rate, self.seed = kind, sample_rate, seed
        self.name = f"{kind} (control)"

    def info(self) -> EngineInfo:
        return EngineInfo(self.name, True, self.sample_rate, model=f"{self.kind} control", device="cpu",
                          description="negative control for the evaluation's sanity gates")  # fmt: skip

    def synthesize(self, request) -> np.ndarray:
        n = int(self.sample_rate * (0.5 + 0.35 * len(request.text.split())))
        if self.kind == "silence":
            return np.zeros(n, np.float32)
        rng = np.random.default_rng(self.seed + (request.seed or 0) + len(request.text))
        return (0.1 * rng.standard_normal(n)).astype(np.float32)

    def stream(self, request) -> Iterator[np.ndarray]:
        audio = self.synthesize(request)
        step = self.sample_rate // 5
        for i in range(0, audio.size, step):
            yield audio[i : i + step]
