"""Speaker embeddings: one module that analysis (voice memory) and eval (SIM, cpSIM) both import.

Backends, best first; :func:`backend_name` says which one is in use and every report prints it:

1. ``resemblyzer`` — Resemblyzer's GE2E d-vector encoder (3-layer LSTM over 40 mel bands,
   256-d output, trained for speaker verification). Its weights (``pretrained.pt``, 17 MB) ship
   inside the ``resemblyzer`` wheel, so it works offline. EchoForge reads that file without
   importing the package: Resemblyzer's own preprocessing imports librosa (numba, llvmlite …),
   so the same pipeline is re-implemented here in numpy — resample to 16 kHz (soxr), volume
   normalised to -30 dBFS (increase only), long silences trimmed with webrtcvad (mode 3, 30 ms
   windows, the same smoothing and dilation), librosa-equivalent mel power spectrogram (25 ms
   periodic Hann, 10 ms hop, zero-padded centre frames, Slaney mel filters), 1.6 s partials at
   1.3 per second, mean of the partial embeddings, L2-normalised. Install: ``pip install
   resemblyzer`` after torch (the Makefile does; it brings webrtcvad, which needs setuptools < 81
   for its ``pkg_resources`` import — the ``analysis`` extra pins it).
2. ``mfcc (fallback)`` — only when the Resemblyzer weights or ``webrtcvad`` are missing: the mean
   of MFCCs c1..c19 over the louder frames, L2-normalised. It is *not* a speaker model (noise and
   silence can score high against each other); reports label it as a fallback.

Set ``ECHOFORGE_SPEAKER_BACKEND=mfcc`` to force the fallback (tests, comparisons).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from echoforge.audio import resample

log = logging.getLogger("echoforge.speaker")

SAMPLE_RATE = 16_000
RESEMBLYZER = "resemblyzer"
MFCC = "mfcc (fallback)"

# Resemblyzer's hyper-parameters (resemblyzer/hparams.py).
_MEL_WINDOW, _MEL_HOP, _N_MELS = 400, 160, 40  # 25 ms, 10 ms at 16 kHz
_PARTIAL_FRAMES = 160  # 1.6 s
_VAD_WINDOW = 480  # 30 ms
_VAD_AVG_WIDTH, _VAD_MAX_SILENCE = 8, 6
_NORM_DBFS = -30.0
_INT16_MAX = 2**15 - 1


# ----------------------------------------------------------------------------- Resemblyzer d-vectors


def resemblyzer_weights() -> Path | None:
    """``pretrained.pt`` inside the installed ``resemblyzer`` package (found without importing it)."""
    spec = importlib.util.find_spec("resemblyzer")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "pretrained.pt"
        if p.is_file():
            return p
    return None


class DVectorEncoder:
    """Resemblyzer's VoiceEncoder network with its packaged weights, on CPU."""

    def __init__(self, weights: Path | str):
        import torch

        self.lstm = torch.nn.LSTM(_N_MELS, 256, 3, batch_first=True)
        self.linear = torch.nn.Linear(256, 256)
        state = torch.load(str(weights), map_location="cpu", weights_only=True)["model_state"]
        self.lstm.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("lstm.")})
        self.linear.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("linear.")})
        self.lstm.eval()
        self.linear.eval()

    def embed_partials(self, mels: np.ndarray) -> np.ndarray:
        """``[n, 160, 40]`` mel partials → ``[n, 256]`` L2-normalised partial embeddings."""
        import torch

        with torch.inference_mode():
            _, (hidden, _) = self.lstm(torch.from_numpy(mels.astype(np.float32)))
            e = torch.relu(self.linear(hidden[-1]))
            return (e / (torch.norm(e, dim=1, keepdim=True) + 1e-12)).numpy()

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        wav = preprocess(audio, sample_rate)
        mel_slices, n_pad = partial_slices(len(wav))
        if n_pad > len(wav):
            wav = np.pad(wav, (0, n_pad - len(wav)))
        mel = mel_spectrogram(wav)  # [frames, 40]
        partials = self.embed_partials(np.stack([mel[s] for s in mel_slices]))
        raw = partials.mean(0)
        return (raw / (np.linalg.norm(raw) + 1e-12)).astype(np.float32)


def preprocess(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Resemblyzer's ``preprocess_wav``: 16 kHz, volume up to -30 dBFS, long silences trimmed."""
    wav = resample(np.asarray(audio, dtype=np.float32), sample_rate, SAMPLE_RATE).astype(np.float64)
    rms = np.sqrt(np.mean((wav * _INT16_MAX) ** 2)) if wav.size else 0.0
    if rms > 0:
        change = _NORM_DBFS - 20 * np.log10(rms / _INT16_MAX)
        if change > 0:
            wav = wav * 10 ** (change / 20)
    return trim_long_silences(wav).astype(np.float32)


def trim_long_silences(wav: np.ndarray) -> np.ndarray:
    """webrtcvad (mode 3) on 30 ms windows, smoothed and dilated as Resemblyzer does."""
    with warnings.catch_warnings():  # webrtcvad 2.0.10 reads its version through pkg_resources
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        import webrtcvad
    from scipy.ndimage import binary_dilation

    wav = wav[: len(wav) - len(wav) % _VAD_WINDOW]
    if not len(wav):
        return wav
    pcm = np.round(np.clip(wav, -1.0, 1.0) * _INT16_MAX).astype("<i2").tobytes()
    vad = webrtcvad.Vad(3)
    flags = np.array([vad.is_speech(pcm[i * 2 : (i + _VAD_WINDOW) * 2], SAMPLE_RATE) for i in range(0, len(wav), _VAD_WINDOW)])
    width = _VAD_AVG_WIDTH
    padded = np.concatenate((np.zeros((width - 1) // 2), flags, np.zeros(width // 2)))
    c = np.cumsum(padded, dtype=float)
    c[width:] = c[width:] - c[:-width]
    mask = np.round(c[width - 1 :] / width).astype(bool)
    mask = binary_dilation(mask, np.ones(_VAD_MAX_SILENCE + 1))
    return wav[np.repeat(mask, _VAD_WINDOW)]


@functools.lru_cache(maxsize=1)
def _slaney_mel_filters() -> np.ndarray:
    """``librosa.filters.mel(sr=16000, n_fft=400, n_mels=40)`` (Slaney scale and area norm)."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)

    def mel_to_hz(m):
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, 1 + _MEL_WINDOW // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2), _N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : _N_MELS + 2] - mel_f[:_N_MELS]))[:, None]
    return weights.astype(np.float32)


def mel_spectrogram(wav: np.ndarray) -> np.ndarray:
    """librosa ``melspectrogram`` (power 2, centre frames zero-padded) as ``[frames, 40]``."""
    x = np.pad(np.asarray(wav, dtype=np.float32), _MEL_WINDOW // 2)
    n = 1 + (len(x) - _MEL_WINDOW) // _MEL_HOP
    idx = np.arange(_MEL_WINDOW)[None, :] + _MEL_HOP * np.arange(n)[:, None]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_MEL_WINDOW) / _MEL_WINDOW)).astype(np.float32)  # periodic Hann
    power = np.abs(np.fft.rfft(x[idx] * window, _MEL_WINDOW)) ** 2
    return (power @ _slaney_mel_filters().T).astype(np.float32)


def partial_slices(n_samples: int, rate: float = 1.3, min_coverage: float = 0.75) -> tuple[list[slice], int]:
    """Resemblyzer's ``compute_partial_slices``: mel slices of 160 frames, and the padded length."""
    n_frames = int(np.ceil((n_samples + 1) / _MEL_HOP))
    step = int(np.round((SAMPLE_RATE / rate) / _MEL_HOP))
    starts = list(range(0, max(1, n_frames - _PARTIAL_FRAMES + step + 1), step))
    if len(starts) > 1:
        last = starts[-1] * _MEL_HOP
        if (n_samples - last) / (_PARTIAL_FRAMES * _MEL_HOP) < min_coverage:
            starts = starts[:-1]
    return [slice(s, s + _PARTIAL_FRAMES) for s in starts], (starts[-1] + _PARTIAL_FRAMES) * _MEL_HOP


# ----------------------------------------------------------------------------- MFCC fallback


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

    x = resample(np.asarray(audio, dtype=np.float32), sample_rate, SAMPLE_RATE)
    x = np.append(x[0], x[1:] - 0.97 * x[:-1]) if x.size else x  # pre-emphasis
    win, hop, n_fft = 400, 160, 512
    if x.size < win:
        x = np.pad(x, (0, win - x.size))
    n = 1 + (x.size - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    frames = x[idx] * np.hamming(win)[None, :]
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2 / n_fft
    logmel = np.log(power @ _mel_filters(n_fft, 40, SAMPLE_RATE).T + 1e-10)
    return dct(logmel, type=2, axis=1, norm="ortho")[:, :n_mfcc]


def mfcc_embedding(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """FALLBACK ONLY — mean MFCC c1..c19 over the loudest 70 % of frames (not a speaker model)."""
    m = mfcc(audio, sample_rate)
    voiced = m[m[:, 0] >= np.quantile(m[:, 0], 0.3)] if m.shape[0] > 3 else m
    return voiced[:, 1:].mean(0).astype(np.float32)


# ----------------------------------------------------------------------------- public API


@functools.lru_cache(maxsize=2)
def _backend(forced: str | None) -> tuple[str, Callable[[np.ndarray, int], np.ndarray], str]:
    """(name, embed function, why) for the best available backend."""
    if forced != "mfcc":
        weights = resemblyzer_weights()
        if weights is None:
            why = "resemblyzer is not installed (pip install resemblyzer)"
        elif importlib.util.find_spec("webrtcvad") is None:
            why = "webrtcvad is not installed (pip install webrtcvad)"
        else:
            try:
                enc = DVectorEncoder(weights)
                return RESEMBLYZER, enc.embed, f"Resemblyzer GE2E d-vectors ({weights})"
            except Exception as exc:  # a broken install: say so, fall back
                why = f"the Resemblyzer weights failed to load ({exc.__class__.__name__}: {exc})"
        log.warning("speaker embeddings: MFCC fallback — %s", why)
        return MFCC, mfcc_embedding, why
    return MFCC, mfcc_embedding, "forced by ECHOFORGE_SPEAKER_BACKEND=mfcc"


def _current() -> tuple[str, Callable[[np.ndarray, int], np.ndarray], str]:
    forced = os.environ.get("ECHOFORGE_SPEAKER_BACKEND", "").strip().lower() or None
    return _backend("mfcc" if forced == "mfcc" else None)


def backend_name() -> str:
    """``"resemblyzer"`` or ``"mfcc (fallback)"`` — name it in every report."""
    return _current()[0]


def backend_note() -> str:
    """Why this backend (the weights file, or why the fallback is in use)."""
    return _current()[2]


def is_fallback() -> bool:
    return backend_name() == MFCC


def embed_speaker(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """L2-normalised speaker embedding of mono float audio (zeros for empty audio)."""
    a = np.asarray(audio, dtype=np.float32).reshape(-1)
    if a.size < sample_rate // 10 or not np.any(a):
        dim = 256 if backend_name() == RESEMBLYZER else 19
        return np.zeros(dim, np.float32)
    v = _current()[1](a, sample_rate)
    return (v / (np.linalg.norm(v) + 1e-9)).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


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
