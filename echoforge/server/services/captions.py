"""Word timings on the server's synthesis paths (captioned speech, tasks, the WebSocket).

Everything goes through :class:`SynthesisService` (its admission, slots and cancellation);
this module only adds a :class:`~echoforge.engines.timing.WordTimer` beside the audio:
espeak-ng reports its own word events through ``request.on_words``; other engines' audio is
aligned to the text (DTW against an espeak-ng rendition, off the event loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from echoforge.captions import to_srt, to_vtt
from echoforge.engines.base import SynthesisRequest
from echoforge.engines.timing import Word, WordTimer, timer_for

CAPTION_FORMATS = ("srt", "vtt", "json")
CAPTION_MIME = {"srt": "application/x-subrip", "vtt": "text/vtt", "json": "application/json"}


def captions_text(words: list[Word], fmt: str) -> str:
    """``words`` as an SRT or WebVTT file."""
    if fmt == "srt":
        return to_srt(words)
    if fmt == "vtt":
        return to_vtt(words)
    raise ValueError(f"unknown caption format {fmt!r} (srt or vtt)")


def timing_source(engine: Any) -> str:
    """How an engine's words are timed: ``engine`` (its own events) or ``aligned``."""
    return "engine" if getattr(engine, "reports_word_timings", False) else "aligned"


async def timed_stream(synthesis: Any, request: SynthesisRequest) -> AsyncIterator[tuple[np.ndarray, list[Word]]]:
    """The service's audio chunks, each with the input words it settled; ends with ``(empty, rest)``.

    Words come in input order and each once; after the last item every input word has come.
    """
    timer, request = timer_for(synthesis.engine, request, streaming=True)
    chunks = synthesis.stream(request)
    try:
        async for chunk in chunks:
            words = (
                timer.add(chunk)
                if timer.engine_words or not timer.align_each_chunk
                else await asyncio.to_thread(timer.add, chunk)
            )
            yield chunk, words
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    rest = timer.finish() if timer.engine_words else await asyncio.to_thread(timer.finish)
    yield np.zeros(0, dtype=np.float32), rest


def synthesize_timed(synthesis: Any, request: SynthesisRequest, **kwargs: Any) -> tuple[np.ndarray, list[Word]]:
    """Blocking (queue workers): ``synthesis.synthesize`` plus the words of the whole utterance."""
    timer, request = timer_for(synthesis.engine, request, streaming=False)
    audio = synthesis.synthesize(request, **kwargs)
    timer.add(audio)
    timer.finish()
    return audio, timer.words


__all__ = [
    "CAPTION_FORMATS",
    "CAPTION_MIME",
    "WordTimer",
    "captions_text",
    "synthesize_timed",
    "timed_stream",
    "timing_source",
]
