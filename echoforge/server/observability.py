"""Hooks into :mod:`echoforge.metrics` (Prometheus) when that module is part of this checkout.

The server reports task outcomes, queue waits, synthesis timings and prompt-cache hits
through these few functions; without the metrics module they do nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

metrics: Any = importlib.import_module("echoforge.metrics") if importlib.util.find_spec("echoforge.metrics") else None


def task_finished(outcome: str, wait_s: float | None = None, run_s: float | None = None) -> None:
    if metrics is not None:
        metrics.observe_task(outcome, wait_s, run_s)


def synthesis_done(engine: str, audio_s: float, wall_s: float, ttfa_s: float | None = None) -> None:
    if metrics is not None:
        metrics.observe_synthesis(engine, audio_s, wall_s, ttfa_s)


def prompt_cache(hit: bool) -> None:
    if metrics is not None:
        metrics.record_prompt_cache(hit)
