"""Audio utilities: every format round-trips, streaming containers decode, limits are enforced."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from echoforge import audio as A

SR = 24_000


def tone(seconds=1.0, freq=220.0, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_freq(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return np.fft.rfftfreq(x.size, 1 / sr)[np.argmax(spec)]


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus", "aac"])
def test_encode_roundtrip_keeps_the_signal(fmt):
    x = tone()
    data = A.encode(x, SR, fmt)
    y, sr = A.load_audio(data)
    assert abs(y.size / sr - 1.0) < 0.12  # codecs pad a little
    assert abs(dominant_freq(y, sr) - 220.0) < 5
    assert 0.3 < np.abs(y).max() < 0.7


def test_pcm_is_raw_s16le():
    x = tone(0.1)
    data = A.encode(x, SR, "pcm")
    assert len(data) == x.size * 2
    np.testing.assert_allclose(A.pcm16_to_float(data), x, atol=1e-3)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "aac", "flac"])
def test_stream_encoder_output_decodes(fmt):
    x = tone(1.0)
    enc = A.StreamEncoder(fmt, SR)
    out = enc.start()
    for i in range(0, x.size, 1999):  # odd chunk size on purpose
        out += enc.write(x[i : i + 1999])
    out += enc.finish()
    y, sr = A.load_audio(out)
    assert abs(y.size / sr - 1.0) < 0.12
    assert abs(dominant_freq(y, sr) - 220.0) < 5


def test_streamed_wav_header_is_open_ended_and_readable():
    header = A.wav_stream_header(SR)
    assert len(header) == 44 and header[:4] == b"RIFF" and header[36:40] == b"data"
    data = header + A.float_to_pcm16(tone(0.5))
    y, sr = sf.read(io.BytesIO(data), dtype="float32")
    assert sr == SR and abs(y.size - SR // 2) <= 1


def test_resample_changes_rate_not_pitch():
    y = A.resample(tone(1.0, 440.0), SR, 16_000)
    assert y.size == 16_000
    assert abs(dominant_freq(y, 16_000) - 440.0) < 3


@pytest.mark.parametrize("bad", [b"", b"definitely not audio" * 50, b"RIFF\x00\x00\x00\x00WAVEjunk"])
def test_garbage_is_a_clear_decode_error(bad):
    with pytest.raises(A.AudioDecodeError):
        A.load_audio(bad)


def test_duration_limits():
    data = A.encode(tone(2.0), SR, "wav")
    with pytest.raises(A.AudioDecodeError, match="limit"):
        A.load_audio(data, max_seconds=1.0)
    with pytest.raises(A.AudioDecodeError, match="at least"):
        A.load_audio(data, min_seconds=3.0)
    y, sr = A.load_audio(data, target_sr=16_000)
    assert sr == 16_000 and y.size == 32_000


def test_levels_and_fades():
    x = tone() * 0.1
    assert np.isclose(np.abs(A.normalize_peak(x, 0.9)).max(), 0.9, atol=1e-4)
    loud = A.normalize_loudness(x, -20.0)
    assert np.isclose(20 * np.log10(np.sqrt(np.mean(loud**2))), -20.0, atol=0.1)
    faded = A.fade_edges(np.ones(SR, dtype=np.float32), SR, 10, 10)
    assert faded[0] == 0 and faded[-1] == 0 and faded[SR // 2] == 1
    joined = A.crossfade(tone(0.5), tone(0.5), SR, 10)
    assert joined.size == SR - int(SR * 0.01)


def test_save_audio_picks_format_from_suffix(tmp_path):
    for name in ("a.wav", "a.flac", "a.mp3", "a.ogg"):
        path = A.save_audio(tmp_path / name, tone(0.5), SR)
        y, _ = A.load_audio(path)
        assert y.size > 0
    with pytest.raises(ValueError, match="unknown audio format"):
        A.save_audio(tmp_path / "a.xyz", tone(0.1), SR)


@pytest.mark.parametrize("speed", [0.25, 0.8, 1.5, 3.0])
def test_change_tempo_keeps_pitch(speed):
    x = tone(2.0, 220.0)
    y = A.change_tempo(x, SR, speed)
    assert abs(y.size / (x.size / speed) - 1) < 0.03
    assert abs(dominant_freq(y, SR) - 220.0) < 5


def test_tempo_stretcher_streams_like_the_whole_clip():
    x = tone(2.0, 220.0)
    stretch = A.TempoStretcher(SR, 1.5)
    parts = [stretch.process(x[i : i + 1920]) for i in range(0, x.size, 1920)]
    assert sum(p.size for p in parts[:5]) > 0  # output flows before the input ends
    streamed = np.concatenate([*parts, stretch.flush()])
    assert abs(streamed.size - A.change_tempo(x, SR, 1.5).size) <= 1
    assert np.array_equal(A.change_tempo(x, SR, 1.0), x)
    with pytest.raises(ValueError):
        A.TempoStretcher(SR, 10.0)
