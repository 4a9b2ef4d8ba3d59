"""Rendering a test set with one engine: every utterance streamed, timed (synthesis time, time to
first audio) and kept as an :class:`Utterance` that the metrics then fill in."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from echoforge.engines import Segment, SynthesisRequest
from echoforge.text import audio_budget_ms


@dataclass
class Utterance:
    kind: str  # "sentence" | "turn" | "reference"
    text: str
    speaker: int
    audio: np.ndarray
    sample_rate: int
    synth_s: float
    ttfa_s: float
    emotion: str | None = None
    hypothesis: str = ""
    words: list = field(default_factory=list)
    wer: float = float("nan")
    category: str = ""
    item: dict = field(default_factory=dict)
    dialogue: int = -1
    voice: str | None = None
    signal: str = ""
    homograph_ok: bool | None = None

    @property
    def duration_s(self) -> float:
        return self.audio.size / self.sample_rate

    def row(self) -> dict[str, Any]:
        r = {"kind": self.kind, "text": self.text, "category": self.category, "speaker": self.speaker,
             "emotion": self.emotion, "hypothesis": self.hypothesis, "wer": self.wer, "signal": self.signal,
             "duration_s": round(self.duration_s, 3), "rtf": round(self.synth_s / max(self.duration_s, 1e-6), 4),
             "ttfa_s": round(self.ttfa_s, 4)}  # fmt: skip
        if self.dialogue >= 0:
            r["dialogue"] = self.dialogue
        if self.homograph_ok is not None:
            r["homograph_ok"] = self.homograph_ok
        return r


def synthesize(engine: Any, text: str, speaker: int = 0, voice: str | None = None, context: list | None = None,
               seed: int = 0, temperature: float | None = None) -> tuple[np.ndarray, float, float]:  # fmt: skip
    """Stream one utterance; returns ``(audio, total_seconds, seconds_to_first_chunk)``."""
    kw = {} if temperature is None else {"temperature": temperature}
    req = SynthesisRequest(text=text, voice=voice, speaker=speaker, context=list(context or []),
                           max_audio_length_ms=audio_budget_ms(text), seed=seed, **kw)  # fmt: skip
    chunks, ttfa = [], math.nan
    t0 = time.perf_counter()
    for chunk in engine.stream(req):
        if math.isnan(ttfa):
            ttfa = time.perf_counter() - t0
        chunks.append(np.asarray(chunk, dtype=np.float32))
    total = time.perf_counter() - t0
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return audio, total, (total if math.isnan(ttfa) else ttfa)


def render(engine: Any, name: str, test_set: dict, reference: tuple[np.ndarray, int, str] | None = None,
           limit: int | None = None, temperature: float | None = None) -> list[Utterance]:  # fmt: skip
    """Every utterance of the set with one engine (reference, sentences, dialogue turns)."""
    sr = engine.sample_rate
    out: list[Utterance] = []
    ref_ctx = []
    if reference is not None:
        audio, ref_sr, ref_text = reference
        ref_ctx = [Segment(0, ref_text, audio, ref_sr, pinned=True)]  # the voice prompt
        out.append(Utterance("reference", ref_text, 0, audio, ref_sr, 0.0, 0.0))
    else:
        ref = test_set.get("reference") or {"speaker": 0, "text": test_set["sentences"][0]["text"]}
        audio, t, ttfa = synthesize(engine, ref["text"], ref.get("speaker", 0), seed=0, temperature=temperature)
        out.append(Utterance("reference", ref["text"], ref.get("speaker", 0), audio, sr, t, ttfa))
    sentences = test_set["sentences"][:limit] if limit else test_set["sentences"]
    for i, item in enumerate(sentences):
        audio, t, ttfa = synthesize(engine, item["text"], 0, context=ref_ctx, seed=i, temperature=temperature)
        out.append(Utterance("sentence", item["text"], 0, audio, sr, t, ttfa, category=item["category"], item=item))
    for d, conv in enumerate(test_set.get("conversations") or []):
        voices = (conv.get("voices") or {}).get(name) or []
        history: list = []
        for i, turn in enumerate(conv.get("turns") or []):
            spk = int(turn.get("speaker", 0))
            voice = voices[spk] if spk < len(voices) else None
            audio, t, ttfa = synthesize(
                engine, turn["text"], spk, voice, history[-4:], seed=100 * (d + 1) + i, temperature=temperature
            )
            out.append(Utterance("turn", turn["text"], spk, audio, sr, t, ttfa, turn.get("emotion"),
                                 category="dialogue", dialogue=d, voice=voice))  # fmt: skip
            history.append(Segment(spk, turn["text"], audio, sr))
    return out
