"""Emotion → generation parameters, tone modifiers in text, and the reply-style policy.

Defaults (override any entry under ``analysis.emotion_params`` in ``echoforge.yaml``):

=========  ===========  =====  ==========================================================
emotion    temperature  top-k  why
=========  ===========  =====  ==========================================================
neutral    (engine)     (eng)  the engine's tuned defaults
happy      0.8          30     lively but controlled
calm       0.5          20     low variety → steady, soft delivery
excited    0.9          35     most variety and energy
sad        0.6          25     subdued, slightly more variety than calm for a falling tone
angry      0.85         40     tense, high variety without the randomness of 0.9+
=========  ===========  =====  ==========================================================

Tone modifiers lead the text: ``(gently) I hear you.`` or ``[excited] We did it!``. They are
removed before speaking (never read aloud), mapped through synonyms to an emotion, and turned
into parameters. Unknown modifiers are dropped with a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

from echoforge.engines.base import SynthesisRequest

log = logging.getLogger("echoforge.analysis")

DEFAULT_PARAMS: dict[str, dict[str, float] | None] = {
    "neutral": None,
    "happy": {"temperature": 0.8, "topk": 30},
    "calm": {"temperature": 0.5, "topk": 20},
    "excited": {"temperature": 0.9, "topk": 35},
    "sad": {"temperature": 0.6, "topk": 25},
    "angry": {"temperature": 0.85, "topk": 40},
}

SYNONYMS: dict[str, str] = {
    **{w: "calm" for w in "calm calmly gently gentle softly soft soothing quietly relaxed warmly tender whisper whispering".split()},
    **{w: "happy" for w in "happy happily cheerful cheerfully joyful joyfully glad warm friendly smiling playful".split()},
    **{w: "excited" for w in "excited excitedly enthusiastic enthusiastically thrilled energetic eager loud".split()},
    **{w: "sad" for w in "sad sadly sorrowful melancholy somber sombre gloomy tearful".split()},
    **{w: "angry" for w in "angry angrily furious annoyed frustrated stern harsh".split()},
    **{w: "neutral" for w in "neutral normal plain flat".split()},
}

_MODIFIER_RE = re.compile(r"^\s*[(\[]\s*([A-Za-z][A-Za-z \-]{0,30})\s*[)\]]\s*")


def parse_tone(text: str) -> tuple[str, list[str], list[str]]:
    """Strip leading modifiers. Returns ``(clean_text, emotions, unknown_modifiers)``."""
    emotions: list[str] = []
    unknown: list[str] = []
    while m := _MODIFIER_RE.match(text):
        word = m.group(1).strip().lower()
        emotion = SYNONYMS.get(word) or next((SYNONYMS[w] for w in word.split() if w in SYNONYMS), None)
        (emotions if emotion else unknown).append(emotion or word)
        text = text[m.end() :]
    for word in unknown:
        log.warning("unknown tone modifier (%s) — ignored; known: %s", word, ", ".join(sorted(set(SYNONYMS.values()))))
    return text.strip(), emotions, unknown


def emotion_params(emotion: str, analysis_settings: dict[str, Any] | None = None) -> dict[str, float] | None:
    """Parameters for ``emotion`` (None = engine defaults), with YAML overrides applied."""
    table = dict(DEFAULT_PARAMS)
    for name, override in ((analysis_settings or {}).get("emotion_params") or {}).items():
        table[name] = None if override is None else {**(table.get(name) or {}), **override}
    return table.get(emotion)


def apply_tone(request: SynthesisRequest, analysis_settings: dict[str, Any] | None = None, *, emotion: str | None = None) -> SynthesisRequest:
    """Parse modifiers off ``request.text`` and apply the emotion's parameters.

    The last modifier wins; an explicit ``emotion`` argument (e.g. from OpenAI ``instructions``)
    is used when the text carries none. Parameters replace the request's temperature/top-k —
    callers that let users set those explicitly apply the user's values afterwards.
    """
    text, emotions, _ = parse_tone(request.text)
    chosen = emotions[-1] if emotions else emotion
    if not text:
        raise ValueError("text is empty once tone modifiers are removed")
    changes: dict[str, Any] = {"text": text}
    params = emotion_params(chosen, analysis_settings) if chosen else None
    if params:
        changes.update({k: (int(v) if k == "topk" else float(v)) for k, v in params.items() if k in ("temperature", "topk")})
    return dataclasses.replace(request, **changes)


def tone_from_instructions(instructions: str) -> dict[str, Any]:
    """OpenAI-style ``instructions`` ("speak calmly and softly") → ``{"emotion", temperature?, topk?}``."""
    words = re.findall(r"[a-z]+", (instructions or "").lower())
    counts: dict[str, int] = {}
    for w in words:
        if w in SYNONYMS:
            counts[SYNONYMS[w]] = counts.get(SYNONYMS[w], 0) + 1
    if not counts:
        return {}
    emotion = max(counts, key=counts.get)
    return {"emotion": emotion, **(DEFAULT_PARAMS.get(emotion) or {})}


REPLY_POLICIES = ("mirror", "calm_down", "lift_up")


def choose_reply_emotion(user_emotion: str, policy: str = "mirror") -> str:
    """The reply's emotion given the user's: mirror it, calm things down, or lift the mood."""
    if policy not in REPLY_POLICIES:
        raise ValueError(f"unknown reply policy {policy!r}; choose one of {', '.join(REPLY_POLICIES)}")
    if policy == "mirror":
        return "calm" if user_emotion == "angry" else user_emotion  # never answer anger with anger
    if policy == "calm_down":
        return {"excited": "calm", "angry": "calm", "sad": "calm", "happy": "happy"}.get(user_emotion, "calm")
    return {"sad": "happy", "calm": "happy", "neutral": "happy", "angry": "calm"}.get(user_emotion, user_emotion)
