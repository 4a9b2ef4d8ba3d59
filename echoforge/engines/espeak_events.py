"""espeak-ng's own word timings: the C library's word events, through ctypes.

The ``espeak-ng`` binary prints audio but not *when* each word is spoken; the library
(``libespeak-ng.so.1``, installed with the binary) reports an ``espeakEVENT_WORD`` at the
sample where each word starts. :func:`speak_with_words` synthesizes one piece of text in
process and returns the audio plus ``(word, start_s, end_s)`` for the words espeak spoke
(from the text it was given). A word starts at its event, or at the first sound after it when
the event comes before a pause (the start of a sentence); it ends where the next one starts (or
the audio ends), minus trailing silence, so commas and sentence pauses are not counted as speech.

The library keeps process-global state (one voice, one callback), so calls are serialized
by one lock. It is the same synthesizer as the binary (same voice, rate and sample rate).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import threading

import numpy as np

_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
SILENCE = 0.01  # |sample| below this is silence when trimming a word's end (s16 full scale = 1)

_WORD_RE = re.compile(r"\S+")


class _Event(ctypes.Structure):
    _fields_ = [  # espeak_EVENT (speak_lib.h)
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class _Library:
    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        self.lib = ctypes.CDLL(name)
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        self.sample_rate = int(self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, 0))
        if self.sample_rate <= 0:
            raise OSError("espeak_Initialize failed")
        self._pcm: list[np.ndarray] = []
        self._events: list[tuple[int, int, int]] = []  # (text_position 1-based, length, sample)
        self._callback = _CALLBACK(self._on_synth)  # kept referenced for the library's lifetime
        self.lib.espeak_SetSynthCallback(self._callback)
        self.voice: bytes | None = None

    def _on_synth(self, wav, n, events) -> int:  # called by espeak_Synth, on the calling thread
        if n > 0 and wav:
            self._pcm.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            if e.type == _EVENT_WORD:
                self._events.append((int(e.text_position), int(e.length), int(e.sample)))
            i += 1
        return 0

    def synth(self, text: str, voice: str, wpm: int) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        if voice.encode() != self.voice:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"unknown espeak voice {voice!r}")
            self.voice = voice.encode()
        self.lib.espeak_SetParameter(_PARAM_RATE, int(wpm), 0)
        self._pcm, self._events = [], []
        data = text.encode("utf-8")
        buf = ctypes.create_string_buffer(data)
        rc = self.lib.espeak_Synth(buf, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if rc != 0:
            raise RuntimeError(f"espeak_Synth failed ({rc})")
        self.lib.espeak_Synchronize()
        pcm = np.concatenate(self._pcm) if self._pcm else np.zeros(0, dtype=np.int16)
        return (pcm.astype(np.float32) / 32768.0), list(self._events)


_LOCK = threading.Lock()
_LIB: _Library | None = None


def available() -> bool:
    """Whether the espeak-ng library can be loaded (it comes with the ``espeak-ng`` package)."""
    try:
        _library()
    except OSError:
        return False
    return True


def _library() -> _Library:
    global _LIB
    if _LIB is None:
        with _LOCK:
            if _LIB is None:
                _LIB = _Library()
    return _LIB


def _voiced_end(audio: np.ndarray, start: int, end: int, floor: int) -> int:
    """The last sample of ``audio[start:end]`` above :data:`SILENCE`, + 1 (at least ``floor``)."""
    loud = np.flatnonzero(np.abs(audio[start:end]) > SILENCE)
    return max(floor, start + int(loud[-1]) + 1) if loud.size else floor


def speak_with_words(text: str, voice: str, wpm: int) -> tuple[np.ndarray, int, list[tuple[str, float, float]]]:
    """Audio (float32), its sample rate, and ``(word, start_s, end_s)`` of the words of ``text`` espeak spoke.

    Words are the whitespace-separated words of ``text``; several events inside one word (a
    number read as "twenty one") count once, at the first. Raises ``OSError`` when the library
    is missing, ``ValueError`` for an unknown voice.
    """
    lib = _library()
    with _LOCK:
        audio, events = lib.synth(text, voice, wpm)
    sr = lib.sample_rate
    spans = [(m.start(), m.end(), m.group()) for m in _WORD_RE.finditer(text)]
    starts: dict[int, int] = {}  # word index -> first sample
    for pos, _length, sample in events:
        char = pos - 1  # text_position is 1-based, in characters
        for k, (a, b, _) in enumerate(spans):
            if a <= char < b:
                starts.setdefault(k, sample)
                break
    ordered = sorted(starts.items())
    words: list[tuple[str, float, float]] = []
    for n, (k, sample) in enumerate(ordered):
        nxt = ordered[n + 1][1] if n + 1 < len(ordered) else audio.size
        nxt = max(nxt, sample)
        loud = np.flatnonzero(np.abs(audio[sample:nxt]) > SILENCE)
        start = sample + int(loud[0]) if loud.size else sample  # the event may come before a pause
        end = _voiced_end(audio, start, nxt, floor=min(nxt, start + 1))
        words.append((spans[k][2], start / sr, end / sr))
    return audio, sr, words
