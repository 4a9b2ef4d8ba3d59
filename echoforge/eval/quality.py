"""Is this audio speech at all? Signal checks behind the suite's sanity gates.

Metrics such as speaker similarity happily score noise: white noise is very similar to other
white noise, so an engine that outputs noise would earn a high cpSIM. The suite therefore checks
each utterance's signal first and flags an engine whose output is mostly silence or noise
(and one whose WER is >= 90 %); flagged engines rank after every unflagged one.

* **silence** — the loudest frames (95th percentile of 25 ms frame RMS) are below -50 dBFS, or
  the clip is shorter than 0.1 s.
* **noise** — loud, but hardly any of its loud frames are periodic: speech has voiced frames
  (normalised autocorrelation peak >= 0.5 at a pitch lag of 2.5-12.5 ms, i.e. 80-400 Hz) in
  about 30-70 % of its loud frames; white noise, hiss and babble from a random codec have few.
  Flagged when under 10 % of loud frames are voiced, or the median spectral flatness of loud
  frames is above 0.3 (speech is typically under 0.1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from echoforge.audio import resample

SILENCE_DBFS = -50.0
MIN_VOICED = 0.10
MAX_FLATNESS = 0.30
_SR = 16_000


@dataclass
class SignalCheck:
    duration_s: float
    loud_dbfs: float  # 95th percentile frame RMS
    voiced_fraction: float  # of loud frames
    flatness: float  # median spectral flatness of loud frames
    verdict: str  # "speech" | "silence" | "noise"

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def check_signal(audio: np.ndarray, sample_rate: int) -> SignalCheck:
    x = resample(np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate, _SR) if np.size(audio) else np.zeros(0)
    dur = x.size / _SR
    win, hop = 400, 160
    if x.size < _SR // 10:
        return SignalCheck(dur, -120.0, 0.0, 0.0, "silence")
    n = 1 + (x.size - win) // hop
    frames = x[np.arange(win)[None, :] + hop * np.arange(n)[:, None]]
    rms_db = 20 * np.log10(np.sqrt((frames**2).mean(1)) + 1e-9)
    loud_db = float(np.percentile(rms_db, 95))
    if loud_db < SILENCE_DBFS:
        return SignalCheck(dur, loud_db, 0.0, 0.0, "silence")
    loud = frames[rms_db >= max(loud_db - 25.0, SILENCE_DBFS)]
    # Periodicity: normalised autocorrelation peak over pitch lags 40..200 samples (400..80 Hz).
    f = loud - loud.mean(1, keepdims=True)
    spec = np.fft.rfft(f, 1024)
    ac = np.fft.irfft(np.abs(spec) ** 2, 1024)[:, : win]
    ac = ac / (ac[:, :1] + 1e-12)
    voiced = float((ac[:, 40:200].max(1) >= 0.5).mean())
    power = np.abs(np.fft.rfft(f * np.hanning(win), 512))[:, 3:192] ** 2 + 1e-12  # ~100 Hz - 6 kHz
    flat = float(np.median(np.exp(np.log(power).mean(1)) / power.mean(1)))
    verdict = "noise" if voiced < MIN_VOICED or flat > MAX_FLATNESS else "speech"
    return SignalCheck(dur, loud_db, voiced, flat, verdict)
