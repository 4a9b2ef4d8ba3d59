"""Semantic end of turn: has the user finished their thought, or only paused?

A fixed silence (``agent.turn.silence_ms``) cannot tell "What time does the library open?" from
"What time does the library open on…" followed by a breath: it either cuts the second short or
makes the first wait. The smart-turn v3 model (pipecat's, a Whisper-encoder classifier over the
last 8 s of the turn's audio, shipped as a CPU ONNX file inside the ``pipecat-ai`` wheel) reads
the intonation and the words' shape and answers with the probability that the turn is complete.

:class:`~echoforge.agent.vad.TurnDetector` asks it once per silence stretch, after
``agent.turn.smart_turn_ms`` of silence: a complete turn ends right there; an incomplete one gets
``agent.turn.incomplete_silence_ms`` before it is ended anyway. Measured in BENCHMARKS.md
("Voice agent: semantic end of turn").
"""

from __future__ import annotations

import functools
import threading

import numpy as np

SAMPLE_RATE = 16_000


class SmartTurn:
    """``p = SmartTurn()(audio)``: probability that the 16 kHz float32 turn ``audio`` is complete.

    Wraps pipecat's ``LocalSmartTurnAnalyzerV3`` (its bundled ``smart-turn-v3.2-cpu.onnx``, one
    onnxruntime thread) and calls its model step directly: the turn buffering around it is ours.
    """

    def __init__(self, threads: int = 1) -> None:
        try:
            from loguru import logger  # pipecat logs through loguru: its banner and debug lines stay out of ours

            logger.disable("pipecat")
            try:
                from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3

                self._analyzer = LocalSmartTurnAnalyzerV3(sample_rate=SAMPLE_RATE, cpu_count=threads)
            finally:
                logger.enable("pipecat")
        except ImportError as exc:  # pipecat-ai is in the agent extra
            raise RuntimeError(
                "agent.turn.smart_turn needs the pipecat-ai package (pip install 'echoforge[agent]'), "
                f"or set agent.turn.smart_turn: false: {exc}"
            ) from exc
        self._lock = threading.Lock()  # one inference at a time on the shared session

    def __call__(self, audio: np.ndarray) -> float:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            return 0.0
        with self._lock:
            return float(self._analyzer._predict_endpoint(audio)["probability"])


@functools.cache
def smart_turn_model() -> SmartTurn:
    """The process's one smart-turn model (loaded on first use, ~0.3 s; shared by every session)."""
    return SmartTurn()
