"""Audio watermarking: mark every generated clip so CSM output can be identified later.

Two methods, picked automatically:

* ``silentcipher`` — when that package is installed, clips are marked with Sesame's public key
  exactly as the reference ``SesameAILabs/csm`` generator does (a learned watermark at 44.1 kHz).
  silentcipher fetches its model weights on first use, so it is opt-in by installation.
* ``spread-spectrum`` (built in) — a keyed pseudo-random noise pattern, band-limited to
  900–3800 Hz (kept by MP3/Opus/AAC at normal bitrates), repeated every 4096 samples at 16 kHz
  and shaped by the speech envelope so silence stays silent. It sits ~26 dB below the speech.
  Detection whitens the spectrum, folds the clip into one 4096-sample period (the repeats add
  up coherently, speech does not) and takes the circular cross-correlation with the pattern at
  every lag, so a codec's delay or a trimmed start does not matter. The score is the peak's
  z-score; unmarked audio scores ~3–4.5 (the maximum of 4096 Gaussian lags), marked speech ≫ 8.

It is a deterrent and a provenance signal, not tamper-proof: pitch shifting or time
stretching defeats the built-in method.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from echoforge.audio import resample

# The key Sesame publishes for CSM-1B's watermark (SesameAILabs/csm, watermarking.py).
CSM_1B_PUBLIC_KEY = (212, 211, 146, 56, 201)
# EchoForge's public key for the built-in method. Anyone can detect with it; set
# csm.watermark_key to a private string to make marks only you can find.
DEFAULT_KEY = "echoforge-public-watermark-v1"

_SR = 16_000
_PERIOD = 4096
_BAND_HZ = (900.0, 3800.0)
_STRENGTH = 0.05  # pattern RMS relative to the local speech RMS (≈ −26 dB)
_ENVELOPE = 320  # 20 ms envelope window at 16 kHz
THRESHOLD = 7.0  # z-score above which a clip counts as marked
MIN_SECONDS = 1.0


@dataclass(frozen=True)
class WatermarkResult:
    detected: bool
    score: float
    method: str
    note: str = ""


def _have_silentcipher() -> bool:
    import importlib.util

    return importlib.util.find_spec("silentcipher") is not None


def _pattern(key: str) -> np.ndarray:
    """One period of the keyed, band-limited, unit-RMS pattern."""
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    spec = rng.standard_normal(_PERIOD // 2 + 1) + 1j * rng.standard_normal(_PERIOD // 2 + 1)
    freqs = np.fft.rfftfreq(_PERIOD, 1 / _SR)
    spec[(freqs < _BAND_HZ[0]) | (freqs > _BAND_HZ[1])] = 0
    p = np.fft.irfft(spec, _PERIOD)
    return (p / p.std()).astype(np.float32)


def _as_numpy(audio) -> tuple[np.ndarray, object]:
    """(float32 1-D array, a function that converts back to the caller's type)."""
    try:
        import torch

        if isinstance(audio, torch.Tensor):
            dev, dt = audio.device, audio.dtype
            return audio.detach().float().cpu().numpy().reshape(-1), lambda a: torch.from_numpy(a).to(dev, dt)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    arr = np.asarray(audio)
    return arr.astype(np.float32).reshape(-1), lambda a: a.astype(arr.dtype if arr.dtype.kind == "f" else np.float32)


def _envelope(x: np.ndarray) -> np.ndarray:
    kernel = np.ones(_ENVELOPE, dtype=np.float32) / _ENVELOPE
    return np.sqrt(np.convolve(x * x, kernel, mode="same")).astype(np.float32)


def _apply_spread_spectrum(x: np.ndarray, sample_rate: int, key: str, offset: int) -> np.ndarray:
    x16 = resample(x, sample_rate, _SR)
    # The pattern's phase follows the absolute position in the stream, so chunks marked one by
    # one line up exactly like a clip marked whole.
    start = round(offset * _SR / sample_rate) % _PERIOD
    index = (start + np.arange(x16.size)) % _PERIOD
    mark16 = _pattern(key)[index] * _envelope(x16) * _STRENGTH
    mark = resample(mark16, _SR, sample_rate)
    mark = np.pad(mark, (0, max(0, x.size - mark.size)))[: x.size]
    return np.clip(x + mark, -1.0, 1.0).astype(np.float32)


def _detect_spread_spectrum(x: np.ndarray, sample_rate: int, key: str) -> float:
    x16 = resample(x, sample_rate, _SR)
    # Whiten: flatten the speech spectrum so the loud low formants do not swamp the pattern.
    spec = np.fft.rfft(x16)
    mag = np.abs(spec)
    width = max(1, spec.size // 512)
    smooth = np.convolve(mag, np.ones(width) / width, mode="same") + 1e-9
    freqs = np.fft.rfftfreq(x16.size, 1 / _SR)
    spec = np.where((freqs >= _BAND_HZ[0]) & (freqs <= _BAND_HZ[1]), spec / smooth, 0)
    y = np.fft.irfft(spec, x16.size)
    blocks = y.size // _PERIOD
    folded = y[: blocks * _PERIOD].reshape(blocks, _PERIOD).sum(axis=0)
    corr = np.fft.irfft(np.fft.rfft(folded) * np.conj(np.fft.rfft(_pattern(key))), _PERIOD)
    spread = corr.std()
    return 0.0 if spread == 0 else float((corr.max() - np.median(corr)) / spread)


def apply(audio, sample_rate: int, key: str | None = None, *, offset: int = 0):
    """Return ``audio`` with an inaudible watermark (same type, shape and rate as the input).

    Args:
        key: a private key string (default: EchoForge's public key, or Sesame's key through
            silentcipher when it is installed).
        offset: for streams, the position (in samples) of this chunk in the whole stream.
    """
    x, back = _as_numpy(audio)
    if x.size == 0:
        return audio
    if _have_silentcipher() and key is None:
        marked = _apply_silentcipher(x, sample_rate)
    else:
        marked = _apply_spread_spectrum(x, sample_rate, key or DEFAULT_KEY, offset)
    out = back(marked)
    return out.reshape(audio.shape) if hasattr(audio, "shape") else out


def detect(audio, sample_rate: int, key: str | None = None) -> WatermarkResult:
    """Is ``audio`` marked with ``key``? (Clips shorter than 1 s cannot be judged.)"""
    x, _ = _as_numpy(audio)
    if x.size < MIN_SECONDS * sample_rate:
        return WatermarkResult(False, 0.0, "spread-spectrum", f"clip shorter than {MIN_SECONDS:g} s: cannot judge")
    if _have_silentcipher() and key is None:
        return _detect_silentcipher(x, sample_rate)
    score = _detect_spread_spectrum(x, sample_rate, key or DEFAULT_KEY)
    return WatermarkResult(score > THRESHOLD, round(score, 2), "spread-spectrum", f"threshold {THRESHOLD:g}")


# ---------------------------------------------------------------- silentcipher (optional)
_SILENTCIPHER_MODEL = None


def _silentcipher_model():
    global _SILENTCIPHER_MODEL
    if _SILENTCIPHER_MODEL is None:
        import silentcipher
        import torch

        _SILENTCIPHER_MODEL = silentcipher.get_model(model_type="44.1k", device="cuda" if torch.cuda.is_available() else "cpu")
    return _SILENTCIPHER_MODEL


def _apply_silentcipher(x: np.ndarray, sample_rate: int) -> np.ndarray:
    import torch

    x44 = resample(x, sample_rate, 44_100)
    marked, _ = _silentcipher_model().encode_wav(torch.from_numpy(x44), 44_100, list(CSM_1B_PUBLIC_KEY), calc_sdr=False, message_sdr=36)
    marked = marked.detach().cpu().numpy() if hasattr(marked, "detach") else np.asarray(marked)
    out = resample(np.asarray(marked, dtype=np.float32).reshape(-1), 44_100, sample_rate)
    return np.pad(out, (0, max(0, x.size - out.size)))[: x.size]


def _detect_silentcipher(x: np.ndarray, sample_rate: int) -> WatermarkResult:
    import torch

    x44 = resample(x, sample_rate, 44_100)
    result = _silentcipher_model().decode_wav(torch.from_numpy(x44), 44_100, phase_shift_decoding=True)
    found = bool(result.get("status")) and list(result.get("messages", [[]])[0]) == list(CSM_1B_PUBLIC_KEY)
    return WatermarkResult(found, 1.0 if found else 0.0, "silentcipher", "Sesame CSM-1B public key")
