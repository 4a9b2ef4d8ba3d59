"""Prosody from audio: energy, pitch, speaking rate, pauses — with Praat (praat-parselmouth).

* Energy: frame RMS in dBFS (25 ms windows, 10 ms hop) over voiced/loud frames, and its spread.
* Pitch: Praat's autocorrelation tracker (75–600 Hz); mean, range (5th–95th percentile),
  variation (std in semitones) and the voiced ratio.
* Speaking rate: words/s from ASR word timings when given; otherwise syllables/s from
  syllable nuclei — intensity peaks that stand out from their surroundings and are voiced
  (after de Jong & Wempe, 2009).
* Pauses: silent stretches ≥ 150 ms between speech (intensity 25 dB below the 99th
  percentile); articulation rate = syllables per second of speech excluding pauses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

_HOP_S = 0.01
_SILENCE_DB_BELOW_PEAK = 25.0
_MIN_PAUSE_S = 0.15
_MIN_DIP_DB = 2.0  # a syllable peak must rise this much above the dip before it


@dataclass
class Prosody:
    duration_s: float
    energy_db: float
    energy_std_db: float
    pitch_mean_hz: float
    pitch_min_hz: float
    pitch_max_hz: float
    pitch_std_semitones: float
    voiced_ratio: float
    syllables: int
    speaking_rate: float  # syllables (or words, see rate_unit) per second, pauses included
    rate_unit: str
    articulation_rate: float  # syllables per second of speech, pauses excluded
    pause_count: int
    pause_mean_s: float
    speech_s: float
    is_speech: bool

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _sound(audio: np.ndarray, sample_rate: int):
    import parselmouth

    return parselmouth.Sound(np.asarray(audio, dtype=np.float64), sampling_frequency=float(sample_rate))


def pitch_track(audio: np.ndarray, sample_rate: int, floor: float = 75.0, ceiling: float = 600.0) -> tuple[np.ndarray, np.ndarray]:
    """(times, f0 Hz with 0 for unvoiced) every 10 ms."""
    pitch = _sound(audio, sample_rate).to_pitch(time_step=_HOP_S, pitch_floor=floor, pitch_ceiling=ceiling)
    return pitch.xs(), pitch.selected_array["frequency"]


def energy_track(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(times, RMS dBFS) with 25 ms windows every 10 ms."""
    win, hop = int(0.025 * sample_rate), int(_HOP_S * sample_rate)
    x = np.asarray(audio, dtype=np.float32)
    if x.size < win:
        x = np.pad(x, (0, win - x.size))
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop]
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    return (np.arange(rms.size) * hop + win / 2) / sample_rate, 20 * np.log10(rms + 1e-10)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of True runs."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def syllable_nuclei(energy_db: np.ndarray, voiced: np.ndarray, speech: np.ndarray) -> np.ndarray:
    """Frame indices of syllable nuclei: voiced local intensity maxima ≥ 2 dB above the preceding dip."""
    smooth = np.convolve(energy_db, np.ones(3) / 3, mode="same")
    peaks: list[int] = []
    dip = smooth[0] if smooth.size else 0.0
    for i in range(1, smooth.size - 1):
        dip = min(dip, smooth[i])
        if smooth[i] >= smooth[i - 1] and smooth[i] > smooth[i + 1] and speech[i] and voiced[i]:
            if smooth[i] - dip >= _MIN_DIP_DB:
                peaks.append(i)
                dip = smooth[i]
    return np.asarray(peaks, dtype=int)


def analyze_prosody(
    audio: np.ndarray,
    sample_rate: int,
    words: Sequence[dict] | None = None,
) -> Prosody:
    """Prosodic measures of one clip.

    Args:
        audio: mono float audio.
        sample_rate: its rate.
        words: optional ASR word timings ``[{"word", "start", "end"}, ...]``; when given the
            speaking rate is words per second over the spoken span.
    """
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    duration = x.size / sample_rate
    t_e, e_db = energy_track(x, sample_rate)
    t_p, f0 = pitch_track(x, sample_rate)
    # Pitch frames onto the energy grid (nearest frame).
    voiced = np.interp(t_e, t_p, (f0 > 0).astype(float), left=0, right=0) > 0.5 if t_p.size else np.zeros_like(t_e, bool)
    peak = np.percentile(e_db, 99) if e_db.size else -100.0
    speech = (e_db > peak - _SILENCE_DB_BELOW_PEAK) & (e_db > -60.0)
    voiced_f0 = f0[f0 > 0]
    voiced_ratio = float(voiced_f0.size / max(1, f0.size))
    is_speech = voiced_ratio > 0.1 and bool(speech.any())

    nuclei = syllable_nuclei(e_db, voiced, speech) if is_speech else np.zeros(0, int)
    runs = _runs(speech)
    speech_s = sum(b - a for a, b in runs) * _HOP_S
    # A pause is a silent gap between consecutive speech runs.
    gaps = [(runs[i + 1][0] - runs[i][1]) * _HOP_S for i in range(len(runs) - 1)]
    pauses = [g for g in gaps if g >= _MIN_PAUSE_S]
    span = ((runs[-1][1] - runs[0][0]) * _HOP_S) if runs else 0.0
    if words:
        spoken = max(w["end"] for w in words) - min(w["start"] for w in words)
        rate, unit = (len(words) / spoken if spoken > 0 else 0.0), "words/s"
    else:
        rate, unit = (len(nuclei) / span if span > 0 else 0.0), "syllables/s"
    phonation = max(span - sum(pauses), 1e-9)
    semitones = 12 * np.log2(voiced_f0 / np.median(voiced_f0)) if voiced_f0.size else np.zeros(0)
    loud = e_db[speech] if speech.any() else e_db
    return Prosody(
        duration_s=duration,
        energy_db=float(np.mean(loud)) if loud.size else -100.0,
        energy_std_db=float(np.std(loud)) if loud.size else 0.0,
        pitch_mean_hz=float(np.mean(voiced_f0)) if voiced_f0.size else 0.0,
        pitch_min_hz=float(np.percentile(voiced_f0, 5)) if voiced_f0.size else 0.0,
        pitch_max_hz=float(np.percentile(voiced_f0, 95)) if voiced_f0.size else 0.0,
        pitch_std_semitones=float(np.std(semitones)) if semitones.size else 0.0,
        voiced_ratio=voiced_ratio,
        syllables=int(len(nuclei)),
        speaking_rate=float(rate),
        rate_unit=unit,
        articulation_rate=float(len(nuclei) / phonation) if is_speech else 0.0,
        pause_count=len(pauses),
        pause_mean_s=float(np.mean(pauses)) if pauses else 0.0,
        speech_s=float(speech_s),
        is_speech=is_speech,
    )


def prosody_features(audio: np.ndarray, sample_rate: int) -> dict[str, float]:
    """Numeric prosody features as a flat dict (used by the dataset pipeline and eval)."""
    return {k: float(v) for k, v in analyze_prosody(audio, sample_rate).to_dict().items() if isinstance(v, (int, float))}


# The names of :func:`basic_prosody`'s features, in order.
BASIC_PROSODY = ("duration_s", "words_per_s", "rms_db_mean", "rms_db_std", "f0_mean_hz", "f0_std_hz", "voiced_frac")


def basic_prosody(audio: np.ndarray, sr: int, text: str) -> np.ndarray:
    """Cheap features with numpy alone (no Praat): the training data's fallback and the evaluation's arousal proxy.

    Returns ``[duration_s, words_per_s, rms_db_mean, rms_db_std, f0_mean_hz, f0_std_hz, voiced_frac]``.
    F0 is a plain autocorrelation estimate on 40 ms frames (60-400 Hz), voiced if the peak > 0.5.
    """
    dur = audio.size / sr
    hop, win = int(0.02 * sr), int(0.04 * sr)
    n = max(1, 1 + (audio.size - win) // hop)
    frames = np.stack(
        [
            np.pad(audio[i * hop : i * hop + win], (0, max(0, win - audio[i * hop : i * hop + win].size)))
            for i in range(n)
        ]
    )
    rms_db = 20 * np.log10(np.sqrt((frames**2).mean(1)) + 1e-6)  # [n]
    f0 = []
    lo, hi = int(sr / 400), int(sr / 60)
    loud = rms_db > rms_db.max() - 30
    for fr in frames[loud]:
        fr = fr - fr.mean()
        ac = np.correlate(fr, fr, "full")[win - 1 :]
        if ac[0] <= 0 or hi >= ac.size:
            continue
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] / ac[0] > 0.5:
            f0.append(sr / lag)
    f0a = np.array(f0) if f0 else np.zeros(1)
    words = len(text.split())
    return np.array([dur, words / max(dur, 1e-3), rms_db.mean(), rms_db.std(), f0a.mean(), f0a.std(), len(f0) / n],
                    dtype=np.float32)  # fmt: skip
