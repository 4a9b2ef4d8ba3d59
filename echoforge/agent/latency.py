"""Per-turn latency bookkeeping: :class:`TurnLatency`, the stage times of one agent turn.

The agent (:class:`~echoforge.agent.pipeline.VoiceAgent`) fills one from the frames it observes;
``as_dict`` gives the keys the metrics, the ``MetricsFrame`` and the benchmarks read.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TurnLatency:
    """Seconds of one turn: stages from the VAD's end-of-turn decision (``vad_end``); voice-to-voice
    from the end of the user's speech (``speech_end``: what the user waits), ``vad_wait_s`` between."""

    vad_end: float
    speech_end: float | None = None
    transcript: float | None = None
    retrieval: float | None = None
    first_token: float | None = None
    first_audio: float | None = None
    text: str = ""

    def as_dict(self) -> dict[str, float | None]:
        def rel(t: float | None) -> float | None:
            return None if t is None else round(t - self.vad_end, 4)

        def delta(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round(b - a, 4)

        return {
            "stt_s": delta(self.vad_end, self.transcript),
            "rag_s": delta(self.transcript, self.retrieval),
            "llm_first_token_s": delta(self.retrieval or self.transcript, self.first_token),
            "tts_first_audio_s": delta(self.first_token, self.first_audio),
            "transcript_at_s": rel(self.transcript),
            "first_token_at_s": rel(self.first_token),
            "vad_wait_s": delta(self.speech_end, self.vad_end),
            "voice_to_voice_s": delta(self.vad_end if self.speech_end is None else self.speech_end, self.first_audio),
        }
