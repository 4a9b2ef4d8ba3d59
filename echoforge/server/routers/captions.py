"""``POST /api/speech/captioned``: speech plus when each word is spoken (and SRT / WebVTT captions).

Word timings: ``[{word, start_s, end_s, interpolated}]`` for the input's words, in order, none
missing (see :mod:`echoforge.engines.timing`; ``interpolated`` marks words whose times were
estimated from their neighbours). Three shapes of answer:

* ``stream: false`` (default): one JSON object — base64 audio, ``words``, and the captions
  asked for in ``captions`` (``srt`` / ``vtt``).
* ``?format=srt`` / ``?format=vtt``: the caption file itself, as a download.
* ``stream: true``: JSON lines (``stream_format: "jsonl"``, ``application/x-ndjson``) or
  server-sent events (``"sse"``), one ``audio`` event per chunk with its base64 audio and the
  words completed so far, then ``done`` with every word.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from echoforge.audio import StreamEncoder, encode
from echoforge.server.deps import RateLimitedDep, ServicesDep
from echoforge.server.schemas import _SAYABLE, ERROR_RESPONSES, TEXT_400, AudioFormatName, StrictNumbers, WordTiming
from echoforge.server.services.captions import CAPTION_MIME, captions_text, timed_stream, timing_source
from echoforge.text import audio_budget_ms

log = logging.getLogger("echoforge.server.captions")
router = APIRouter(prefix="/api", tags=["captions"], responses=ERROR_RESPONSES)


class CaptionedSpeechRequest(StrictNumbers):
    model_config = ConfigDict(extra="forbid")

    input: str = Field(
        ..., min_length=1, description="What to say (limit: server.max_text_chars).", json_schema_extra=_SAYABLE
    )
    voice: str = Field("alloy", min_length=1, max_length=120, description="Voice id, name or OpenAI voice name.")
    response_format: AudioFormatName = Field("wav", description="Audio format of the (base64) audio.")
    speed: float | None = Field(None, ge=0.25, le=4.0)
    instructions: str | None = Field(None, max_length=4096)
    stream: StrictBool = Field(False, description="Stream audio chunks with the words completed so far.")
    stream_format: Literal["jsonl", "sse"] = Field(
        "jsonl", description="With stream: JSON lines or server-sent events."
    )
    captions: Literal["srt", "vtt"] | None = Field(None, description="Also return the captions as this file format.")


class CaptionedSpeech(BaseModel):
    audio: str = Field(..., description="The whole audio, base64.")
    audio_format: str
    sample_rate: int
    duration_s: float
    engine: str
    timing: Literal["engine", "aligned"] = Field(
        ..., description="Word times from the engine's own events, or aligned to its audio."
    )
    words: list[WordTiming]
    captions: str | None = None


def _event(kind: str, fmt: str, **fields: Any) -> bytes:
    data = json.dumps({"type": kind, **fields})
    return f"data: {data}\n\n".encode() if fmt == "sse" else (data + "\n").encode()


@router.post(
    "/speech/captioned",
    response_model=CaptionedSpeech,
    responses={
        200: {
            "content": {
                "application/json": {},
                "application/x-ndjson": {},
                "text/event-stream": {},
                "application/x-subrip": {},
                "text/vtt": {},
            },
            "description": "JSON (audio + words); with stream: JSON lines / SSE; with ?format=srt|vtt: the caption file.",
        },
        400: TEXT_400,
    },
)
async def captioned_speech(
    body: CaptionedSpeechRequest,
    services: ServicesDep,
    _: RateLimitedDep,
    format: Annotated[
        Literal["json", "srt", "vtt"], Query(description="json (default), or the SRT / WebVTT file only.")
    ] = "json",
) -> Response:
    """Text → speech with word timestamps (and SRT / WebVTT captions)."""
    text = services.synthesis.check_text(body.input, "input", speed=body.speed)
    budget = audio_budget_ms(text, body.speed or 1.0, floor_ms=services.settings.generation.max_audio_length_ms)
    request = await run_in_threadpool(
        services.synthesis.build_request,
        text=text,
        voice=body.voice,
        speed=body.speed,
        instructions=body.instructions,
        max_audio_length_ms=budget,
    )
    engine = services.engine
    sr = engine.sample_rate
    if body.stream and format == "json":
        timed = timed_stream(services.synthesis, request)
        first = await timed.__anext__()  # admission and engine errors get a proper status, not a cut stream
        return StreamingResponse(
            _streamed(services, timed, first, body),
            media_type="text/event-stream" if body.stream_format == "sse" else "application/x-ndjson",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
    pieces: list[np.ndarray] = []
    words: list[dict] = []
    async for chunk, done in timed_stream(services.synthesis, request):
        pieces.append(chunk)
        words.extend(done)
    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    if format in ("srt", "vtt"):
        return Response(
            captions_text(words, format),
            media_type=CAPTION_MIME[format],
            headers={"Content-Disposition": f'attachment; filename="speech.{format}"'},
        )
    data = await asyncio.to_thread(encode, audio, sr, body.response_format)
    return JSONResponse(
        {
            "audio": base64.b64encode(data).decode("ascii"),
            "audio_format": body.response_format,
            "sample_rate": sr,
            "duration_s": round(audio.size / sr, 3),
            "engine": engine.name,
            "timing": timing_source(engine),
            "words": words,
            "captions": captions_text(words, body.captions) if body.captions else None,
        }
    )


async def _streamed(services: Any, timed: Any, first: tuple, body: CaptionedSpeechRequest) -> AsyncIterator[bytes]:
    engine = services.engine
    fmt = body.stream_format
    encoder = StreamEncoder(body.response_format, engine.sample_rate)
    inline = encoder.fmt in ("wav", "pcm")

    async def run(fn, *args) -> bytes:
        return fn(*args) if inline else await asyncio.to_thread(fn, *args)

    words: list[dict] = []
    samples = 0
    head = await run(encoder.start)

    async def items() -> AsyncIterator[tuple]:
        yield first
        async for item in timed:
            yield item

    try:
        async for chunk, done in items():
            words.extend(done)
            data = (head + await run(encoder.write, chunk)) if chunk.size else b""
            if chunk.size:
                head = b""
            samples += chunk.size
            if data or done:
                yield _event("audio", fmt, audio=base64.b64encode(data).decode("ascii"), words=done)
        tail = await run(encoder.finish)
        done_fields: dict[str, Any] = {
            "words": words,
            "duration_s": round(samples / engine.sample_rate, 3),
            "sample_rate": engine.sample_rate,
            "audio_format": body.response_format,
            "engine": engine.name,
            "timing": timing_source(engine),
        }
        if tail:
            yield _event("audio", fmt, audio=base64.b64encode(tail).decode("ascii"), words=[])
        if body.captions:
            done_fields["captions"] = captions_text(words, body.captions)
        yield _event("done", fmt, **done_fields)
    except Exception as exc:  # headers are sent already: say so in the stream, then end it
        log.warning("captioned stream ended early: %s", exc)
        yield _event("error", fmt, message=str(exc) or type(exc).__name__)
    finally:
        await timed.aclose()
