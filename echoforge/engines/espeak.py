"""espeak-ng fallback engine: the last resort, formant synthesis through the ``espeak-ng`` binary.

Robotic but intelligible and always available (``apt-get install espeak-ng``). Labelled as a
fallback, never as CSM. ``voice`` accepts espeak voice names with variants, e.g. ``en-us``,
``en-gb+f3``; ``speed`` scales words per minute (175 at 1.0).

Thread safety: every sentence is one ``espeak-ng`` process (text on stdin, WAV on stdout), and
the engine keeps no mutable state between calls, so concurrent requests from several threads
simply run several processes at once. ``max_concurrency`` (``server.fallback_concurrency``)
tells the server how many to run; the server bounds itself by it.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from echoforge.engines.base import BaseEngine, EngineError, EngineUnavailable, SynthesisRequest, VoiceInfo
from echoforge.text import normalize_text, split_sentences

if TYPE_CHECKING:
    from echoforge.config import Settings

BASE_WPM = 175
_VOICE_RE = re.compile(r"^[A-Za-z0-9_\-]+(\+[A-Za-z0-9_\-]+)?$")

VOICES = [
    VoiceInfo(id="en-us", name="US English (male)", tags={"gender": "male", "language": "en-US"}),
    VoiceInfo(id="en-us+f3", name="US English (female)", tags={"gender": "female", "language": "en-US"}),
    VoiceInfo(id="en-gb", name="British English (male)", tags={"gender": "male", "language": "en-GB"}),
    VoiceInfo(id="en-gb+f4", name="British English (female)", tags={"gender": "female", "language": "en-GB"}),
]


class EspeakEngine(BaseEngine):
    name = "espeak"
    is_fallback = True
    sample_rate = 22_050
    model = "espeak-ng"
    description = "espeak-ng formant synthesis — FALLBACK engine (not CSM), last resort."
    reports_word_timings = True  # espeak-ng's word events, when request.on_words asks for them

    def __init__(self, binary: str | None = None, default_voice: str = "en-us", max_concurrency: int = 1) -> None:
        self.binary = binary or shutil.which("espeak-ng") or shutil.which("espeak")
        if not self.binary:
            raise EngineUnavailable("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
        self.default_voice = default_voice
        self.max_concurrency = max(1, int(max_concurrency))

    @classmethod
    def from_settings(cls, settings: Settings) -> EspeakEngine:
        return cls(max_concurrency=settings.server.fallback_pool_size())

    def voices(self) -> list[VoiceInfo]:
        return list(VOICES)

    def _voice_for(self, request: SynthesisRequest) -> str:
        voice = request.voice or self.default_voice
        # Only espeak voice names reach the command line; anything else (e.g. a CSM voice id)
        # uses the default voice.
        return voice if _VOICE_RE.match(voice) and voice[0].isalpha() and len(voice) < 40 else self.default_voice

    def _speak(self, text: str, voice: str, wpm: int) -> np.ndarray:
        import soundfile as sf

        # Text goes through stdin ("--stdin"), never through argv, so it cannot become an option.
        cmd = [self.binary, "-v", voice, "-s", str(wpm), "--stdout", "--stdin"]
        try:
            proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=120, check=False)
        except subprocess.TimeoutExpired as exc:
            raise EngineError("espeak-ng timed out") from exc
        if proc.returncode != 0 or not proc.stdout:
            if voice != self.default_voice:  # unknown voice name → retry with the default
                return self._speak(text, self.default_voice, wpm)
            raise EngineError(f"espeak-ng failed: {proc.stderr.decode(errors='replace').strip()}")
        audio, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
        if sr != self.sample_rate:  # only ever changes once (an espeak build with another rate)
            self.sample_rate = int(sr)
        return np.asarray(audio, dtype=np.float32).reshape(-1)

    def stream(self, request: SynthesisRequest) -> Iterator[np.ndarray]:
        voice = self._voice_for(request)
        wpm = int(min(max(BASE_WPM * request.speed, 80), 450))
        max_samples = int(request.max_audio_length_ms * self.sample_rate / 1000)
        produced = 0
        for sentence in split_sentences(normalize_text(request.text), pack=False):
            words: list[tuple[str, float, float]] = []
            if request.on_words is not None:
                audio, words = self._speak_timed(sentence, voice, wpm)
            else:
                audio = self._speak(sentence, voice, wpm)
            audio = audio[: max(0, max_samples - produced)]
            if audio.size == 0:
                break
            if request.on_words is not None:
                cut = audio.size / self.sample_rate
                offset = produced / self.sample_rate
                request.on_words([(w, offset + s, offset + min(e, cut)) for w, s, e in words if s < cut])
            produced += audio.size
            yield audio

    def _speak_timed(self, sentence: str, voice: str, wpm: int) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
        """The sentence through the espeak-ng library, with its word events (the binary when the library is missing)."""
        from echoforge.engines import espeak_events

        try:
            try:
                audio, sr, words = espeak_events.speak_with_words(sentence, voice, wpm)
            except ValueError:  # unknown voice name → the default, as the binary path does
                audio, sr, words = espeak_events.speak_with_words(sentence, self.default_voice, wpm)
        except OSError:  # no libespeak-ng: audio without words (the caller aligns it instead)
            return self._speak(sentence, voice, wpm), []
        if sr != self.sample_rate:
            from echoforge.audio import resample

            audio = resample(audio, sr, self.sample_rate)
        return audio, words
