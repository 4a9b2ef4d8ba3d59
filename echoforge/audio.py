"""Audio I/O for all of EchoForge: decoding, resampling, encoding, streaming containers.

Inside EchoForge audio is a 1-D ``float32`` numpy array in [-1, 1] plus a sample rate.
This module owns every conversion at the edges:

* :func:`load_audio` decodes files/bytes (WAV/FLAC/OGG via soundfile, everything else —
  MP3, M4A, WebM/Opus from a browser's MediaRecorder — via PyAV/FFmpeg) and validates them.
* :func:`resample` uses soxr (high quality, fast).
* :func:`encode` / :class:`StreamEncoder` produce wav, pcm (s16le), flac, mp3, opus, aac.
* :func:`wav_stream_header` is a WAV header valid for streaming (unknown final length).
* :func:`normalize_peak`, :func:`normalize_loudness`, :func:`fade_edges`, :func:`crossfade`
  keep levels sane and chunk seams click-free.

Why one module of ~600 lines: it is the one place that knows audio formats and the libraries
behind them (soundfile, PyAV/FFmpeg, soxr); every part of EchoForge takes audio in and hands it
out through it, and the whole-clip and streaming encoders share one format table. Each section
above is short and stands alone.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Literal

import numpy as np

AudioFormat = Literal["wav", "pcm", "flac", "mp3", "opus", "aac"]
FORMATS: tuple[str, ...] = ("wav", "pcm", "flac", "mp3", "opus", "aac")

MIME_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "pcm": "audio/L16",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
}

# PyAV container / codec per compressed format. Opus only runs at 48 kHz; AAC goes in ADTS
# so that it can be streamed and concatenated.
_AV_FORMATS: dict[str, tuple[str, str, int | None]] = {
    "mp3": ("mp3", "libmp3lame", None),
    "opus": ("ogg", "libopus", 48_000),
    "aac": ("adts", "aac", None),
    "flac": ("flac", "flac", None),
}


class AudioDecodeError(ValueError):
    """The bytes are not audio we can decode, or they break a limit (duration, rate)."""


class AudioTooLong(AudioDecodeError):
    """The audio is longer than the caller's ``max_seconds`` (found before decoding it all)."""


MAX_CHANNELS = 8


def to_mono_float32(audio) -> np.ndarray:
    """Any audio array → 1-D float32: the one place multi-channel audio becomes mono.

    Accepts numpy arrays, torch tensors or lists, shaped ``[T]``, ``[T, C]`` (soundfile) or
    ``[C, T]`` (PyAV, torchaudio), with leading/trailing size-1 axes allowed (``[1, C, T]``).
    The channel axis is the short one, of at most :data:`MAX_CHANNELS`; channels are averaged
    (a plain downmix, so ``[T, 2]`` and ``[2, T]`` of the same clip give the same samples).
    Integer PCM is scaled to [-1, 1].

    Raises:
        AudioDecodeError: more than 2 real axes, or no axis short enough to be channels.
    """
    if hasattr(audio, "detach") and hasattr(audio, "numpy"):  # a torch tensor (no torch import here)
        audio = audio.detach().cpu()
        audio = (audio.float() if audio.is_floating_point() else audio).numpy()  # bf16 has no numpy twin
    a = np.asarray(audio)
    if a.ndim > 2:
        a = a.reshape([n for n in a.shape if n != 1] or [1])
    if a.ndim == 2:
        if min(a.shape) > MAX_CHANNELS:
            raise AudioDecodeError(
                f"audio of shape {tuple(a.shape)} has no channel axis (at most {MAX_CHANNELS} channels)"
            )
        # Channels are the short axis; a square array is read as soundfile's [T, C].
        channel_axis = 1 if a.shape[1] <= a.shape[0] else 0
        a = a.mean(axis=channel_axis) if np.issubdtype(a.dtype, np.floating) else _int_mean(a, channel_axis)
    elif a.ndim == 0:
        a = a.reshape(1)
    elif a.ndim != 1:
        raise AudioDecodeError(f"audio must be 1-D or 2-D, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    return np.ascontiguousarray(a, dtype=np.float32)


def _int_mean(a: np.ndarray, axis: int) -> np.ndarray:
    """Mean of integer PCM over channels, kept in the input's integer type (so it is scaled once)."""
    return np.round(a.astype(np.float64).mean(axis=axis)).astype(a.dtype)


def is_multichannel(audio) -> bool:
    """True when ``audio`` (numpy/torch) has more than one non-trivial axis."""
    shape = getattr(audio, "shape", None)
    return shape is not None and sum(1 for n in shape if n != 1) > 1


def cut_at_pause(audio: np.ndarray, sample_rate: int, max_seconds: float, search_seconds: float = 1.5) -> np.ndarray:
    """The first ``max_seconds`` of ``audio``, ending at the quietest moment of its last ``search_seconds``.

    For over-long reference clips: cutting in a pause (the lowest-energy 20 ms window near the
    limit) rather than at an arbitrary sample keeps the kept part from ending mid-word.
    Audio already within the limit is returned as is.
    """
    a = np.asarray(audio, dtype=np.float32).reshape(-1)
    limit = int(max_seconds * sample_rate)
    if a.size <= limit:
        return a
    win = max(1, int(0.02 * sample_rate))
    lo = max(win, limit - int(search_seconds * sample_rate))
    region = a[lo:limit]
    if region.size < win:
        return a[:limit]
    # Energy of each 20 ms window (hop 10 ms); the cut lands at the centre of the quietest one.
    hop = max(1, win // 2)
    energies = np.array([float(np.mean(region[i : i + win] ** 2)) for i in range(0, region.size - win + 1, hop)])
    quietest = energies.size - 1 - int(np.argmin(energies[::-1]))  # the latest one on ties: keep the most
    best = quietest * hop + win // 2
    return a[: lo + best]


def _too_long(seconds: float, max_seconds: float) -> AudioTooLong:
    return AudioTooLong(f"audio is {seconds:.1f} s long; the limit is {max_seconds:g} s")


def _decode_with_av(data: bytes, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode with PyAV; with ``max_seconds``, refuse by the container's declared duration
    before decoding and stop decoding as soon as the limit is passed (a hard cap either way)."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.audio:
                raise AudioDecodeError("the file contains no audio stream")
            stream = container.streams.audio[0]
            if max_seconds is not None:
                declared = None
                if stream.duration is not None and stream.time_base is not None:
                    declared = float(stream.duration * stream.time_base)
                elif container.duration is not None:
                    declared = container.duration / 1_000_000
                if declared is not None and declared > max_seconds:
                    raise _too_long(declared, max_seconds)
            resampler = av.AudioResampler(format="flt", layout="mono")
            parts: list[np.ndarray] = []
            rate = stream.codec_context.sample_rate or stream.rate
            cap = int(max_seconds * rate) + 1 if max_seconds is not None and rate else None
            decoded = 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    parts.append(out.to_ndarray().reshape(-1))
                    decoded += parts[-1].size
                if cap is not None and decoded > cap:
                    raise _too_long(decoded / rate, max_seconds)  # type: ignore[arg-type]
            for out in resampler.resample(None):
                parts.append(out.to_ndarray().reshape(-1))
    except AudioDecodeError:
        raise
    except Exception:  # PyAV raises many error types (with internal codes) for garbage input
        raise AudioDecodeError(
            "could not decode the audio: the file is damaged or not in a supported audio format "
            "(wav, flac, ogg, mp3, m4a, webm…)"
        ) from None
    if not parts or not rate:
        raise AudioDecodeError("audio stream is empty")
    return np.concatenate(parts).astype(np.float32), int(rate)


def load_audio(
    source: str | Path | bytes,
    target_sr: int | None = None,
    *,
    max_seconds: float | None = None,
    min_seconds: float | None = None,
) -> tuple[np.ndarray, int]:
    """Decode a file path or bytes to mono float32.

    Args:
        source: a path or the file's bytes.
        target_sr: resample to this rate (None keeps the file's rate).
        max_seconds / min_seconds: reject audio outside these durations.

    Returns:
        ``(audio, sample_rate)``.

    Raises:
        AudioDecodeError: not decodable, empty, silent-length, or out of the duration limits.
    """
    import soundfile as sf

    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise AudioDecodeError(f"audio file not found: {path}")
        data = path.read_bytes()
    else:
        data = bytes(source)
    if not data:
        raise AudioDecodeError("audio is empty (0 bytes)")
    try:
        info = sf.info(io.BytesIO(data))
    except Exception:
        info = None
    if info is not None and info.samplerate > 0 and 0 < info.frames < 2**62:
        # The header's length (WAV, FLAC STREAMINFO, …): refuse before decoding anything.
        if max_seconds is not None and info.frames / info.samplerate > max_seconds:
            raise _too_long(info.frames / info.samplerate, max_seconds)
    try:
        frames = -1
        if max_seconds is not None and info is not None and info.samplerate > 0:
            frames = int(max_seconds * info.samplerate) + 2  # a hard cap when the header has no length
        raw, sr = sf.read(io.BytesIO(data), frames=frames, dtype="float32", always_2d=False)
        audio = to_mono_float32(raw)
    except AudioDecodeError:
        raise
    except Exception:
        audio, sr = _decode_with_av(data, max_seconds)
    if audio.size == 0 or sr <= 0:
        raise AudioDecodeError("audio contains no samples")
    if not np.all(np.isfinite(audio)):
        raise AudioDecodeError("audio contains NaN or infinite samples")
    duration = audio.size / sr
    if max_seconds is not None and duration > max_seconds:
        raise _too_long(duration, max_seconds)
    if min_seconds is not None and duration < min_seconds:
        raise AudioDecodeError(f"audio is {duration:.2f} s long; at least {min_seconds:g} s is needed")
    if target_sr is not None and target_sr != sr:
        audio, sr = resample(audio, sr, target_sr), target_sr
    return audio, int(sr)


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """High-quality resampling (soxr); a no-op when the rates match."""
    audio = np.asarray(audio, dtype=np.float32)
    if sr_in == sr_out or audio.size == 0:
        return audio
    import soxr

    return soxr.resample(audio, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


def float_to_pcm16(audio: np.ndarray) -> bytes:
    """float32 [-1, 1] → little-endian signed 16-bit bytes (clipped)."""
    a = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    return (a * 32767.0).astype("<i2").tobytes()


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian s16 bytes → float32 in [-1, 1]."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def wav_stream_header(sample_rate: int, channels: int = 1, bits: int = 16) -> bytes:
    """A 44-byte PCM WAV header for a stream of unknown length.

    The RIFF and data sizes are set to the maximum (0xFFFFFFFF), which players (ffmpeg,
    browsers, soundfile) accept as "read until the end", the usual convention for
    streamed WAV.
    """
    byte_rate = sample_rate * channels * bits // 8
    block_align = channels * bits // 8
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, byte_rate, block_align, bits)
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF)
    )


def normalize_peak(audio: np.ndarray, peak: float = 0.95) -> np.ndarray:
    """Scale so the largest absolute sample is ``peak`` (silence is returned unchanged)."""
    a = np.asarray(audio, dtype=np.float32)
    m = float(np.max(np.abs(a))) if a.size else 0.0
    return a if m < 1e-9 else (a * (peak / m)).astype(np.float32)


def normalize_loudness(audio: np.ndarray, target_dbfs: float = -20.0, peak_limit: float = 0.99) -> np.ndarray:
    """RMS loudness normalisation to ``target_dbfs`` with a peak ceiling (no clipping)."""
    a = np.asarray(audio, dtype=np.float32)
    rms = float(np.sqrt(np.mean(a**2))) if a.size else 0.0
    if rms < 1e-9:
        return a
    gain = 10 ** (target_dbfs / 20) / rms
    m = float(np.max(np.abs(a)))
    gain = min(gain, peak_limit / m)
    return (a * gain).astype(np.float32)


def fade_edges(audio: np.ndarray, sample_rate: int, fade_in_ms: float = 5.0, fade_out_ms: float = 5.0) -> np.ndarray:
    """Short raised-cosine fades at the edges so cuts do not click."""
    a = np.array(audio, dtype=np.float32, copy=True)
    for ms, at_start in ((fade_in_ms, True), (fade_out_ms, False)):
        n = min(int(sample_rate * ms / 1000), a.size // 2)
        if n <= 1:
            continue
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n, dtype=np.float32))
        if at_start:
            a[:n] *= ramp
        else:
            a[-n:] *= ramp[::-1]
    return a


def crossfade(a: np.ndarray, b: np.ndarray, sample_rate: int, ms: float = 10.0) -> np.ndarray:
    """Join two clips with an equal-power crossfade of ``ms`` milliseconds."""
    n = min(int(sample_rate * ms / 1000), a.size, b.size)
    if n <= 1:
        return np.concatenate([a, b]).astype(np.float32)
    t = np.linspace(0, np.pi / 2, n, dtype=np.float32)
    mid = a[-n:] * np.cos(t) + b[:n] * np.sin(t)
    return np.concatenate([a[:-n], mid, b[n:]]).astype(np.float32)


def silence(seconds: float, sample_rate: int) -> np.ndarray:
    return np.zeros(int(round(seconds * sample_rate)), dtype=np.float32)


def _atempo_factors(speed: float) -> list[float]:
    """FFmpeg's atempo takes 0.5–2.0 per instance: split larger changes into a chain."""
    factors = []
    while speed > 2.0:
        factors.append(2.0)
        speed /= 2.0
    while speed < 0.5:
        factors.append(0.5)
        speed /= 0.5
    return [*factors, speed]


class TempoStretcher:
    """Streaming tempo change without pitch change (FFmpeg ``atempo`` through PyAV).

    ``process(chunk)`` returns what is ready so far; ``flush()`` returns the tail. Used for the
    ``speed`` of engines that cannot change their speaking rate themselves (CSM).
    """

    def __init__(self, sample_rate: int, speed: float) -> None:
        import av

        if not 0.25 <= speed <= 4.0:
            raise ValueError("speed must be between 0.25 and 4.0")
        self.sample_rate = sample_rate
        self._graph = av.filter.Graph()
        node = self._graph.add_abuffer(format="flt", sample_rate=sample_rate, layout="mono", time_base=f"1/{sample_rate}")
        for factor in _atempo_factors(speed):
            nxt = self._graph.add("atempo", f"{factor:.6f}")
            node.link_to(nxt)
            node = nxt
        sink = self._graph.add("abuffersink")
        node.link_to(sink)
        self._graph.configure()
        self._pts = 0

    def _pull(self) -> np.ndarray:
        import av

        out = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                break
            out.append(frame.to_ndarray().reshape(-1))
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)

    def process(self, chunk: np.ndarray) -> np.ndarray:
        import av

        chunk = np.ascontiguousarray(np.asarray(chunk, dtype=np.float32).reshape(-1))
        if chunk.size == 0:
            return np.zeros(0, dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += chunk.size
        self._graph.push(frame)
        return self._pull()

    def flush(self) -> np.ndarray:
        self._graph.push(None)
        return self._pull()


def change_tempo(audio: np.ndarray, sample_rate: int, speed: float) -> np.ndarray:
    """Speed speech up or down (0.25–4.0) keeping its pitch; 1.0 returns the input."""
    if speed == 1.0:
        return np.asarray(audio, dtype=np.float32)
    stretcher = TempoStretcher(sample_rate, speed)
    return np.concatenate([stretcher.process(audio), stretcher.flush()])


class _Sink(io.RawIOBase):
    """A write-only, non-seekable byte sink: muxers then never seek back to patch headers
    (which would corrupt bytes we have already sent)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, b) -> int:  # type: ignore[override]
        self.data += bytes(b)
        return len(b)

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


class StreamResampler:
    """Chunk-by-chunk resampling without seams (soxr's streaming resampler): ``process`` / ``flush``."""

    def __init__(self, sr_in: int, sr_out: int) -> None:
        import soxr

        self.sr_in, self.sr_out = sr_in, sr_out
        self._stream = soxr.ResampleStream(sr_in, sr_out, 1, dtype="float32", quality="HQ")

    def process(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.ascontiguousarray(np.asarray(chunk, dtype=np.float32).reshape(-1))
        return self._stream.resample_chunk(chunk, last=False)

    def flush(self) -> np.ndarray:
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


class StreamEncoder:
    """Incremental encoder: ``start()`` → header bytes, ``write(chunk)`` → bytes, ``finish()`` → tail.

    wav streams a header with open-ended sizes then raw PCM; pcm is raw s16le; mp3, opus (Ogg)
    and aac (ADTS) go through PyAV/FFmpeg and are flushed as packets come out. flac is
    buffered and written whole at ``finish()``: a streamed FLAC header cannot carry the total
    length, and libsndfile (soundfile) refuses such files.

    ``output_rate``: resample (seamlessly, across chunks) from ``sample_rate`` to this rate
    first — e.g. OpenAI's ``pcm`` is 24 kHz whatever the engine's rate.
    """

    def __init__(self, fmt: str, sample_rate: int, bitrate: int | None = None, *, output_rate: int | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unsupported audio format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.input_rate = sample_rate
        self.sample_rate = output_rate or sample_rate
        self._input_resampler = (
            StreamResampler(sample_rate, self.sample_rate) if self.sample_rate != sample_rate else None
        )
        self._flac_parts: list[np.ndarray] = []
        self._bitrate = bitrate
        self._buf: _Sink | None = None
        self._container = None
        self._stream = None
        self._resampler = None
        self._pts = 0

    def start(self) -> bytes:
        if self.fmt == "wav":
            return wav_stream_header(self.sample_rate)
        if self.fmt in ("pcm", "flac"):
            return b""
        import av

        container_fmt, codec, forced_rate = _AV_FORMATS[self.fmt]
        self._buf = _Sink()
        self._container = av.open(self._buf, mode="w", format=container_fmt)
        rate = forced_rate or self.sample_rate
        self._stream = self._container.add_stream(codec, rate=rate)
        self._stream.layout = "mono"
        if self._bitrate:
            self._stream.bit_rate = self._bitrate
        elif self.fmt in ("mp3", "aac", "opus"):
            self._stream.bit_rate = 64_000 if self.fmt == "opus" else 128_000
        self._rate = rate
        # Encoders want fixed-size frames (1152 for mp3, 1024 for aac, 960 for opus at 48 kHz);
        # keep the remainder between writes and pad only the very last frame.
        self._frame_size = self._stream.codec_context.frame_size or 0
        self._pending = np.zeros(0, dtype=np.float32)
        return self._drain()

    def _encode_frames(self, samples: np.ndarray) -> None:
        import av

        frame = av.AudioFrame.from_ndarray(np.clip(samples, -1, 1)[None, :], format="flt", layout="mono")
        frame.sample_rate = self._rate
        frame.pts = self._pts
        self._pts += samples.size
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def _drain(self) -> bytes:
        assert self._buf is not None
        return self._buf.take()

    def write(self, chunk: np.ndarray) -> bytes:
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if self._input_resampler is not None:
            chunk = self._input_resampler.process(chunk)
        return self._write(chunk)

    def _write(self, chunk: np.ndarray) -> bytes:
        if self.fmt in ("wav", "pcm"):
            return float_to_pcm16(chunk)
        if self.fmt == "flac":
            self._flac_parts.append(chunk)
            return b""
        if self._rate != self.sample_rate:
            chunk = resample(chunk, self.sample_rate, self._rate)
        pending = np.concatenate([self._pending, chunk])
        n = self._frame_size
        usable = pending.size - pending.size % n if n else pending.size
        for i in range(0, usable, n or max(usable, 1)):
            self._encode_frames(pending[i : i + (n or usable)])
        self._pending = pending[usable:]
        return self._drain()

    def finish(self) -> bytes:
        tail = b""
        if self._input_resampler is not None:
            tail = self._write(self._input_resampler.flush())
        if self.fmt in ("wav", "pcm"):
            return tail
        if self.fmt == "flac":
            audio = np.concatenate(self._flac_parts) if self._flac_parts else np.zeros(0, dtype=np.float32)
            self._flac_parts = []
            return encode(audio, self.sample_rate, "flac")
        return tail + self._finish_av()

    def _finish_av(self) -> bytes:
        if self._pending.size:
            tail = self._pending
            if self._frame_size:
                tail = np.pad(tail, (0, self._frame_size - tail.size))
            self._encode_frames(tail)
            self._pending = np.zeros(0, dtype=np.float32)
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._drain()


def encode(audio: np.ndarray, sample_rate: int, fmt: str = "wav") -> bytes:
    """Encode a whole clip. WAV gets a header with exact sizes (unlike the streamed one)."""
    if fmt not in FORMATS:
        raise ValueError(f"unsupported audio format {fmt!r}; choose one of {', '.join(FORMATS)}")
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if fmt == "wav":
        import soundfile as sf

        buf = io.BytesIO()
        sf.write(buf, np.clip(audio, -1, 1), sample_rate, subtype="PCM_16", format="WAV")
        return buf.getvalue()
    if fmt == "pcm":
        return float_to_pcm16(audio)
    if fmt == "flac":
        import soundfile as sf

        buf = io.BytesIO()
        sf.write(buf, np.clip(audio, -1, 1), sample_rate, subtype="PCM_16", format="FLAC")
        return buf.getvalue()
    enc = StreamEncoder(fmt, sample_rate)
    return enc.start() + enc.write(audio) + enc.finish()


def save_audio(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write a file, picking the format from its suffix (default wav)."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".") or "wav"
    fmt = {"ogg": "opus", "m4a": "aac", "raw": "pcm"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ValueError(f"cannot write {path.name}: unknown audio format {fmt!r} (use {', '.join(FORMATS)})")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(audio, sample_rate, fmt))
    return path
