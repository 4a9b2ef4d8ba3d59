"""Emotion from prosody (and text): a documented heuristic, not a trained classifier.

Arousal (calm ↔ excited) comes from loudness, pitch height/variation and speaking rate;
valence (negative ↔ positive) from pitch variation and, when a transcript is given, a small
sentiment lexicon. The pair maps to a label on the circumplex model:

    high arousal + positive → excited (very high) / happy
    high arousal + negative → angry
    low arousal  + negative → sad
    low arousal  + neutral/positive → calm
    near the centre → neutral

Confidence grows with the distance from the centre. Prosody alone says little about
valence, so without text the valence estimate stays close to zero and labels lean on
arousal. Reference values assume adult conversational speech; they are deliberately simple
so the behaviour is predictable and testable.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import numpy as np

from echoforge.analysis.prosody import Prosody, analyze_prosody

LABELS = ("neutral", "happy", "calm", "excited", "sad", "angry")

_POSITIVE = set(
    "good great love lovely wonderful happy glad thanks thank awesome amazing excellent nice fantastic yay "
    "excited fun enjoy beautiful perfect brilliant cool best win won delighted pleased hooray".split()
)
_NEGATIVE = set(
    "bad sad terrible awful hate angry upset sorry unfortunately worst horrible annoyed furious cry lost "
    "fail failed wrong problem afraid scared worried tired miss hurt pain disappointed unfair".split()
)
_WORD_RE = re.compile(r"[a-z']+")


@dataclass
class Emotion:
    label: str
    confidence: float
    arousal: float  # -1 calm … +1 excited
    valence: float  # -1 negative … +1 positive

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def text_sentiment(text: str) -> float:
    """Lexicon sentiment in [-1, 1] (negations flip the next word; '!' adds emphasis)."""
    words = _WORD_RE.findall(text.lower())
    score, hits, negate = 0.0, 0, False
    for w in words:
        if w in ("not", "no", "never", "don't", "isn't", "wasn't", "can't"):
            negate = True
            continue
        polarity = 1 if w in _POSITIVE else -1 if w in _NEGATIVE else 0
        if polarity:
            score += -polarity if negate else polarity
            hits += 1
        negate = False
    if not hits:
        return 0.0
    return float(np.tanh(score / math.sqrt(hits) * (1.3 if "!" in text else 1.0)))


def _squash(x: float) -> float:
    return float(np.tanh(x))


def estimate_emotion(prosody: Prosody, transcript: str | None = None) -> Emotion:
    """Arousal/valence from prosody (+ text) → label and confidence."""
    if not prosody.is_speech:
        return Emotion("neutral", 0.0, 0.0, 0.0)
    # Deviations from typical conversational speech, each roughly in [-1, 1].
    loud = (prosody.energy_db + 22.0) / 8.0  # -22 dBFS speech level ≈ 0
    rate = (prosody.articulation_rate - 4.5) / 2.0  # ~4.5 syllables/s typical
    var = (prosody.pitch_std_semitones - 2.5) / 2.0  # ~2.5 st typical variation
    arousal = _squash(0.45 * loud + 0.35 * rate + 0.35 * var)
    valence = 0.25 * _squash(var)
    if transcript:
        valence = 0.3 * valence + 0.7 * text_sentiment(transcript)
    radius = math.hypot(arousal, valence)
    if radius < 0.25:
        label = "neutral"
    elif arousal >= 0.2:
        label = "angry" if valence < -0.2 else "excited" if arousal > 0.6 and valence >= 0 else "happy" if valence > 0.1 else "excited"
    elif arousal <= -0.2:
        label = "sad" if valence < -0.15 else "calm"
    else:
        label = "happy" if valence > 0.25 else "sad" if valence < -0.25 else "neutral"
    confidence = float(min(0.95, 0.35 + 0.6 * min(1.0, radius)))
    return Emotion(label, confidence if label != "neutral" else float(max(0.35, 1 - radius)), arousal, float(valence))


def classify_emotion(audio: np.ndarray, sample_rate: int, transcript: str | None = None) -> dict:
    """``{"label", "confidence", "arousal", "valence"}`` for a clip (used by the agent and eval)."""
    return estimate_emotion(analyze_prosody(audio, sample_rate), transcript).to_dict()
