"""Voice analysis: prosody, Mimi-code features, emotion → generation parameters, voice memory.

``analyze_audio`` is the one-call entry point; the submodules hold the pieces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from echoforge.analysis.emotion import Emotion, classify_emotion, estimate_emotion
from echoforge.analysis.params import (
    apply_tone,
    choose_reply_emotion,
    emotion_params,
    parse_tone,
    tone_from_instructions,
)
from echoforge.analysis.prosody import Prosody, analyze_prosody, prosody_features


@dataclass
class AnalysisReport:
    prosody: Prosody
    emotion: Emotion
    suggested_params: dict | None

    def to_dict(self) -> dict:
        return {"prosody": self.prosody.to_dict(), "emotion": self.emotion.to_dict(), "suggested_params": self.suggested_params}


def analyze_audio(
    audio: np.ndarray, sample_rate: int, transcript: str | None = None, words: Sequence[dict] | None = None
) -> AnalysisReport:
    """Prosody + emotion of a clip, and the generation parameters that emotion maps to."""
    prosody = analyze_prosody(audio, sample_rate, words)
    emotion = estimate_emotion(prosody, transcript)
    return AnalysisReport(prosody, emotion, emotion_params(emotion.label))


__all__ = [
    "AnalysisReport",
    "analyze_audio",
    "analyze_prosody",
    "apply_tone",
    "choose_reply_emotion",
    "classify_emotion",
    "emotion_params",
    "parse_tone",
    "prosody_features",
    "tone_from_instructions",
]
