"""Mimi's rates, defined once: 24 kHz audio <-> 12.5 code frames a second.

One frame is 1920 samples = 80 ms of audio and costs CSM one backbone step. Everything that
converts between samples, seconds and frames (codec, prompt, scheduler, metrics, training
data, evaluation) imports these; this module imports nothing (no torch).
"""

SAMPLE_RATE = 24_000  # Hz, Mimi's (and so CSM's) audio
FRAME_RATE = 12.5  # Mimi code frames per second
FRAME_SIZE = 1920  # samples per frame: SAMPLE_RATE / FRAME_RATE
FRAME_MS = 80  # milliseconds per frame: 1000 / FRAME_RATE

__all__ = ["FRAME_MS", "FRAME_RATE", "FRAME_SIZE", "SAMPLE_RATE"]
