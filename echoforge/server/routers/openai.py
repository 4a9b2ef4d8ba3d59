"""OpenAI-compatible speech API: ``POST /v1/audio/speech``, ``GET /v1/audio/voices``, ``GET /v1/models``.

Audio is streamed with chunked transfer while it is generated (WAV with an open-ended
header, see :func:`echoforge.audio.wav_stream_header`), or as server-sent events
(``stream_format="sse"``: ``speech.audio.delta`` with base64 audio, then ``speech.audio.done``).
The first chunk is produced before the response starts, so engine errors still get a proper
error status instead of a truncated stream.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator

import numpy as np
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from echoforge.audio import MIME_TYPES, StreamEncoder
from echoforge.server.deps import RateLimitedDep, ServicesDep
from echoforge.server.errors import BadRequest, NotFound
from echoforge.server.schemas import ERROR_RESPONSES, TEXT_400, ModelCard, ModelList, SpeechRequest, VoiceList
from echoforge.server.services.voices import voice_engine
from echoforge.text import audio_budget_ms

log = logging.getLogger("echoforge.server.openai")
router = APIRouter(prefix="/v1", tags=["openai"], responses=ERROR_RESPONSES)

PCM_SAMPLE_RATE = 24_000  # OpenAI's raw pcm: 24 kHz, 16-bit signed little-endian, mono
MODEL_ALIASES = ("csm-1b", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
_CREATED = 1_735_689_600  # 2025-01-01, a fixed "created" for the model cards


async def _encoded(encoder: StreamEncoder, first: np.ndarray, rest: AsyncIterator[np.ndarray]) -> AsyncIterator[bytes]:
    """Encoded bytes of ``first`` + ``rest``; compressed formats encode off the event loop."""
    inline = encoder.fmt in ("wav", "pcm")

    async def run(fn, *args) -> bytes:
        return fn(*args) if inline else await asyncio.to_thread(fn, *args)

    try:
        head = await run(encoder.start)
        data = head + await run(encoder.write, first)
        if data:
            yield data
        async for chunk in rest:
            data = await run(encoder.write, chunk)
            if data:
                yield data
        tail = await run(encoder.finish)
        if tail:
            yield tail
    except Exception as exc:  # headers are sent already: end the stream and log it
        log.warning("speech stream ended early: %s", exc)
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


async def _sse(audio: AsyncIterator[bytes], text: str) -> AsyncIterator[bytes]:
    async for data in audio:
        event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")}
        yield f"data: {json.dumps(event)}\n\n".encode()
    tokens = max(1, len(text) // 4)
    done = {"type": "speech.audio.done", "usage": {"input_tokens": tokens, "output_tokens": 0, "total_tokens": tokens}}
    yield f"data: {json.dumps(done)}\n\n".encode()


@router.post(
    "/audio/speech",
    response_class=StreamingResponse,
    responses={200: {"content": {mime: {} for mime in {*MIME_TYPES.values(), "text/event-stream"}}}, 400: TEXT_400},
)
async def speech(body: SpeechRequest, services: ServicesDep, _: RateLimitedDep) -> StreamingResponse:
    """Text → speech, streamed while it is generated (drop-in for OpenAI's endpoint)."""
    if body.model not in MODEL_ALIASES:
        raise NotFound(
            f"model {body.model!r} does not exist; use one of {', '.join(MODEL_ALIASES)}",
            param="model",
            code="model_not_found",
        )
    voice = body.voice if isinstance(body.voice, str) else body.voice.get("id")
    if not isinstance(voice, str) or not voice.strip():
        raise BadRequest('voice must be a voice name or {"id": name}', param="voice")
    text = services.synthesis.check_text(body.input, "input", speed=body.speed)  # the same rule as /api
    # Every text within the character limit is spoken in full: split at sentences by the engine
    # (CSM: piece after piece, each continuing the previous one) and streamed as it goes; the
    # audio cap follows from the text.
    budget = audio_budget_ms(text, body.speed or 1.0, floor_ms=services.settings.generation.max_audio_length_ms)
    request = await run_in_threadpool(
        services.synthesis.build_request,
        text=body.input,
        voice=voice,
        speed=body.speed,
        instructions=body.instructions,
        max_audio_length_ms=budget,
    )
    t0 = time.perf_counter()
    chunks = services.synthesis.stream(request)
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        first = np.zeros(0, dtype=np.float32)
    log.info("speech: first audio after %.3f s", time.perf_counter() - t0)
    # pcm has no header, so it is OpenAI's fixed 24 kHz s16le mono whatever the engine's rate;
    # every other format carries its rate in its header (the engine's, see /api/health).
    output_rate = PCM_SAMPLE_RATE if body.response_format == "pcm" else None
    encoder = StreamEncoder(body.response_format, services.engine.sample_rate, output_rate=output_rate)
    audio = _encoded(encoder, first, chunks)
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    if body.stream_format == "sse":
        return StreamingResponse(_sse(audio, body.input), media_type="text/event-stream", headers=headers)
    return StreamingResponse(audio, media_type=MIME_TYPES[body.response_format], headers=headers)


@router.get("/audio/voices", response_model=VoiceList)
def voices(services: ServicesDep) -> dict:
    """All voices (OpenAI names such as ``alloy`` are aliases of built-ins: see each voice's id).

    Audio formats of ``/v1/audio/speech``: ``pcm`` is always 24 kHz s16le mono (as OpenAI's);
    ``wav``, ``flac``, ``mp3`` and ``aac`` carry the engine's own rate in their header (24 kHz
    for CSM, 22.05 kHz for Piper/espeak: ``engine.sample_rate`` in ``/api/health``); ``opus``
    is 48 kHz.
    """
    return {"voices": [v.public() for v in services.voices.list()], "engine": voice_engine(services.engine.info())}


@router.get("/models", response_model=ModelList)
def models(services: ServicesDep) -> dict:
    engine = services.engine.info().name
    return {
        "object": "list",
        "data": [ModelCard(id=m, created=_CREATED, owned_by=f"echoforge:{engine}") for m in MODEL_ALIASES],
    }


@router.get("/models/{model_id}", response_model=ModelCard)
def model(model_id: str, services: ServicesDep) -> ModelCard:
    if model_id not in MODEL_ALIASES:
        raise NotFound(f"model {model_id!r} does not exist", param="model", code="model_not_found")
    return ModelCard(id=model_id, created=_CREATED, owned_by=f"echoforge:{services.engine.info().name}")
