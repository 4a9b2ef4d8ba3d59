"""The espeak engine with probes for the concurrency tests (registered as ``espeak_probe``).

Environment: ``PROBE_DIR`` (files are written there), ``PROBE_PARTIES`` (barrier size).

* text containing ``overlap<key>``: the first ``PROBE_PARTIES`` such calls wait for each other
  at a barrier (per key) inside the engine, and the most calls in flight together is written
  to ``PROBE_DIR/max-<key>``;
* text containing ``hold<key>``: writes ``PROBE_DIR/started-<key>`` and blocks until
  ``PROBE_DIR/release`` exists.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

from echoforge.engines.espeak import EspeakEngine

_OVERLAP = re.compile(r"overlap(\w+)")
_HOLD = re.compile(r"hold(\w+)")


class ProbeEspeakEngine(EspeakEngine):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dir = Path(os.environ.get("PROBE_DIR", "."))
        self.parties = int(os.environ.get("PROBE_PARTIES", "2"))
        self._lock = threading.Lock()
        self._barriers: dict[str, threading.Barrier] = {}
        self._calls: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}
        self._max: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings) -> ProbeEspeakEngine:
        return cls(max_concurrency=settings.server.fallback_pool_size())

    def stream(self, request):
        overlap = _OVERLAP.search(request.text)
        hold = _HOLD.search(request.text)
        if hold:
            (self.dir / f"started-{hold.group(1)}").touch()
            deadline = time.monotonic() + 120
            while not (self.dir / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        if not overlap:
            yield from super().stream(request)
            return
        key = overlap.group(1)
        with self._lock:
            barrier = self._barriers.setdefault(key, threading.Barrier(self.parties, timeout=60))
            self._calls[key] = self._calls.get(key, 0) + 1
            first_round = self._calls[key] <= self.parties
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
            self._max[key] = max(self._max.get(key, 0), self._in_flight[key])
            (self.dir / f"max-{key}").write_text(str(self._max[key]))
        try:
            if first_round:
                barrier.wait()  # BrokenBarrierError (→ failed request) unless `parties` are here together
            yield from super().stream(request)
        finally:
            with self._lock:
                self._in_flight[key] -= 1
