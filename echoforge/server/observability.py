"""The server's hooks into :mod:`echoforge.metrics` (Prometheus): task outcomes, queue waits,
synthesis timings and prompt-cache hits, reported by the services through these few functions.
"""

from __future__ import annotations

from echoforge import metrics


def task_finished(outcome: str, wait_s: float | None = None, run_s: float | None = None) -> None:
    metrics.observe_task(outcome, wait_s, run_s)


def synthesis_done(engine: str, audio_s: float, wall_s: float, ttfa_s: float | None = None) -> None:
    metrics.observe_synthesis(engine, audio_s, wall_s, ttfa_s)


def prompt_cache(hit: bool) -> None:
    metrics.record_prompt_cache(hit)
