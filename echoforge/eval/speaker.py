"""Speaker embeddings for similarity / consistency metrics (and the simple diarization of data prep).

Backends, best first (the report names the one used):

1. ``echoforge.analysis.memory`` — the analysis module's voice embedding (Resemblyzer d-vectors)
   when that module is installed and exposes ``embed_speaker`` / ``speaker_embedding``.
2. ``resemblyzer`` directly, if importable (its small GE2E encoder ships inside the package).
3. ``mfcc`` — the built-in fallback: the mean of 19 MFCCs (c1..c19) over voiced frames,
   L2-normalised. It has no training and no channel compensation, so absolute
   values are not comparable with published SIM numbers; it does order *same voice* above
   *different voice* (see tests), which is what the ranking needs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

_SR = 16_000


@functools.lru_cache(maxsize=1)
def _backend() -> tuple[str, Callable[[np.ndarray, int], np.ndarray]]:
    try:
        from echoforge.analysis import memory  # type: ignore[attr-defined]

        for name in ("embed_speaker", "speaker_embedding", "voice_embedding"):
            fn = getattr(memory, name, None)
            if callable(fn):
                return "echoforge.analysis", lambda a, sr, fn=fn: np.asarray(fn(a, sr), dtype=np.float32).reshape(-1)
    except Exception:
        pass
    try:
        from resemblyzer import VoiceEncoder, preprocess_wav

        enc = VoiceEncoder("cpu", verbose=False)

        def rz(audio: np.ndarray, sr: int) -> np.ndarray:
            return enc.embed_utterance(preprocess_wav(audio, source_sr=sr)).astype(np.float32)

        return "resemblyzer", rz
    except Exception:
        pass
    return "mfcc", mfcc_embedding


def backend_name() -> str:
    """Which embedding backend is in use (for reports)."""
    return _backend()[0]


def embed_speaker(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """L2-normalised speaker embedding of mono float audio."""
    v = _backend()[1](np.asarray(audio, dtype=np.float32), sample_rate)
    return v / (np.linalg.norm(v) + 1e-9)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


@functools.lru_cache(maxsize=4)
def _mel_filters(n_fft: int, n_mels: int, sr: int) -> np.ndarray:
    def hz_to_mel(f):
        return 2595 * np.log10(1 + f / 700)

    mels = np.linspace(hz_to_mel(60), hz_to_mel(sr / 2 - 200), n_mels + 2)
    hz = 700 * (10 ** (mels / 2595) - 1)
    bins = np.floor((n_fft + 1) * hz / sr).astype(int)
    fb = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(1, n_mels + 1):
        lo, c, hi = bins[m - 1], bins[m], bins[m + 1]
        fb[m - 1, lo:c] = (np.arange(lo, c) - lo) / max(c - lo, 1)
        fb[m - 1, c:hi] = (hi - np.arange(c, hi)) / max(hi - c, 1)
    return fb


def mfcc(audio: np.ndarray, sample_rate: int, n_mfcc: int = 20) -> np.ndarray:
    """MFCCs ``[frames, n_mfcc]`` (25 ms Hamming windows, 10 ms hop, 40 mel bands, at 16 kHz)."""
    from scipy.fft import dct

    from echoforge.audio import resample

    x = resample(np.asarray(audio, dtype=np.float32), sample_rate, _SR)
    x = np.append(x[0], x[1:] - 0.97 * x[:-1]) if x.size else x  # pre-emphasis
    win, hop, n_fft = 400, 160, 512
    if x.size < win:
        x = np.pad(x, (0, win - x.size))
    n = 1 + (x.size - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    frames = x[idx] * np.hamming(win)[None, :]  # [n, win]
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2 / n_fft  # [n, n_fft/2+1]
    logmel = np.log(power @ _mel_filters(n_fft, 40, _SR).T + 1e-10)  # [n, 40]
    return dct(logmel, type=2, axis=1, norm="ortho")[:, :n_mfcc]


def mfcc_embedding(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mean MFCC c1..c19 over the loudest 70% of frames (silence carries no voice).

    The long-term average cepstrum reflects the vocal tract / timbre. Adding standard
    deviations was tried and separates voices less well (same-voice vs cross-voice cosine
    0.91 / 0.63 against 0.88 / 0.48 for the mean alone, Piper + three espeak voices).
    """
    m = mfcc(audio, sample_rate)
    energy = m[:, 0]
    voiced = m[energy >= np.quantile(energy, 0.3)] if m.shape[0] > 3 else m
    return voiced[:, 1:].mean(0).astype(np.float32)


def kmeans(x: np.ndarray, k: int, iters: int = 50, seed: int = 0) -> list[int]:
    """Plain k-means on rows of ``x`` (k-means++ init); returns a cluster label per row."""
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d = np.min([((x - c) ** 2).sum(1) for c in centers], axis=0)
        centers.append(x[rng.choice(len(x), p=d / d.sum()) if d.sum() > 0 else rng.integers(len(x))])
    c = np.stack(centers)
    labels = np.zeros(len(x), dtype=int)
    for _ in range(iters):
        labels = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        new = np.stack([x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return labels.tolist()
