"""One WebSocket speaking session (``WS /api/stream``): incremental text in, PCM audio out.

A receive loop buffers text and queues every complete sentence; a speaking task turns queued
sentences into audio through :meth:`SynthesisService.stream` (engine in worker threads) and
sends ``segment_start`` / binary PCM / ``segment_end``. ``cancel`` cancels the speaking task
(closing the engine stream) and drops what is queued. Protocol: docs/websocket.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import TYPE_CHECKING, Any

from fastapi import WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool

from echoforge.audio import float_to_pcm16
from echoforge.engines.base import EngineBusy
from echoforge.server.errors import ApiError
from echoforge.text import audio_budget_ms, clean_text, sentence_ends, split_sentences

if TYPE_CHECKING:
    from echoforge.server.deps import Services

log = logging.getLogger("echoforge.server.stream")

MAX_BUFFER_CHARS = 8192
_END = object()
_FLUSHED = object()  # a flush's sentences are spoken: tell the client ({"type": "flushed"})


async def receive_message(ws: WebSocket) -> Any:
    """The next JSON message; ``ValueError`` for binary or malformed frames."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    if message.get("text") is None:
        raise ValueError("binary frames are not accepted; send JSON text messages")
    try:
        return json.loads(message["text"])
    except json.JSONDecodeError:
        raise ValueError("messages must be JSON") from None


_SAYABLE = re.compile(r"[^\W_]")


def sentences(text: str) -> list[str]:
    """One piece per sentence (each spoken as its own segment); very long ones are cut further.

    The one sentence rule (:func:`echoforge.text.split_sentences`): "Dr. Smith" and "3.5" stay whole.
    """
    out = split_sentences(text, pack=False)
    # Pieces with nothing to say ("...", a lone emoji) are skipped: streamed LLM text has them.
    return [s for s in out if _SAYABLE.search(clean_text(s))]


def split_complete(buffer: str) -> tuple[list[str], str]:
    """Complete sentences at the front of ``buffer`` and the unfinished rest (:func:`echoforge.text.split_complete`)."""
    ends = sentence_ends(buffer)
    if not ends:
        return [], buffer
    return sentences(buffer[: ends[-1]]), buffer[ends[-1] :].lstrip()


class SpeechSession:
    """One connection: a receive loop feeding sentences to a speaking task."""

    def __init__(self, ws: WebSocket, services: Services, params: dict[str, Any]) -> None:
        self.ws = ws
        self.services = services
        self.params = dict(params)
        # Word events ("timestamps": true in start): {"type": "words"} after the audio holding them.
        self.timestamps = bool(self.params.pop("timestamps", False))
        self.audio_s = 0.0  # audio sent in this session so far (segment_start's offset_s)
        self.sentences: asyncio.Queue[Any] = asyncio.Queue()
        self.buffer = ""
        self.speaker_task: asyncio.Task | None = None

    async def send_error(self, message: str, status: int = 400, code: str | None = None) -> None:
        with contextlib.suppress(Exception):
            await self.ws.send_json({"type": "error", "message": message, "status": status, "code": code})

    async def speak_forever(self) -> None:
        while True:
            item = await self.sentences.get()
            if item is _END:
                await self.ws.send_json({"type": "done"})
                return
            if item is _FLUSHED:
                await self.ws.send_json({"type": "flushed"})
                continue
            await self.speak(item)

    async def speak(self, text: str) -> None:
        try:
            params = dict(self.params)
            floor = self.services.settings.generation.max_audio_length_ms
            params.setdefault("max_audio_length_ms", audio_budget_ms(text, params.get("speed") or 1.0, floor_ms=floor))
            request = await run_in_threadpool(self.services.synthesis.build_request, text=text, **params)
        except ApiError as exc:
            await self.send_error(exc.message, exc.status, exc.code)
            return
        start: dict[str, Any] = {"type": "segment_start", "text": text}
        if self.timestamps:  # where this segment starts in the session's audio
            start["offset_s"] = round(self.audio_s, 3)
        await self.ws.send_json(start)
        rate = self.services.engine.sample_rate
        try:
            if self.timestamps:
                from echoforge.server.services.captions import timed_stream

                async with contextlib.aclosing(timed_stream(self.services.synthesis, request)) as timed:
                    async for chunk, words in timed:
                        if chunk.size:
                            await self.ws.send_bytes(float_to_pcm16(chunk))
                            self.audio_s += chunk.size / rate
                        if words:  # times from the start of this segment's audio
                            await self.ws.send_json({"type": "words", "words": words})
            else:
                async with contextlib.aclosing(self.services.synthesis.stream(request)) as chunks:
                    async for chunk in chunks:
                        await self.ws.send_bytes(float_to_pcm16(chunk))
                        self.audio_s += chunk.size / rate
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.ws.send_json({"type": "segment_end", "cancelled": True})
            raise
        except WebSocketDisconnect:
            raise
        except ApiError as exc:  # e.g. 503 server_overloaded: every engine slot busy, wait queue full
            await self.send_error(exc.message, exc.status, exc.code)
        except EngineBusy as exc:
            await self.send_error(str(exc), 503, "server_overloaded")
        except Exception as exc:  # the engine failed on this sentence: report it, keep the session
            log.warning("stream synthesis failed: %s", exc, exc_info=not isinstance(exc, (ValueError, RuntimeError)))
            await self.send_error(f"synthesis failed: {exc}", 503, "engine_error")
        await self.ws.send_json({"type": "segment_end"})

    def queue_text(self, text: str, final: bool = False) -> None:
        self.buffer += text
        if final:
            ready, self.buffer = sentences(self.buffer), ""
        else:
            ready, self.buffer = split_complete(self.buffer)
        for s in ready:
            self.sentences.put_nowait(s)

    async def cancel(self) -> None:
        self.buffer = ""
        while not self.sentences.empty():
            self.sentences.get_nowait()
        if self.speaker_task is not None:
            self.speaker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.speaker_task
        self.speaker_task = asyncio.create_task(self.speak_forever())

    async def run(self) -> None:
        self.speaker_task = asyncio.create_task(self.speak_forever())
        try:
            while True:
                receive = asyncio.create_task(receive_message(self.ws))
                done, _ = await asyncio.wait({receive, self.speaker_task}, return_when=asyncio.FIRST_COMPLETED)
                if self.speaker_task in done and receive not in done:
                    receive.cancel()
                    self.speaker_task.result()  # re-raise a crash; normal end = done was sent
                    return
                try:
                    msg = receive.result()
                except ValueError as exc:
                    await self.send_error(str(exc))
                    continue
                kind = msg.get("type") if isinstance(msg, dict) else None
                if kind == "text":
                    text = msg.get("text")
                    if not isinstance(text, str):
                        await self.send_error("'text' messages need a string 'text' field")
                        continue
                    if len(self.buffer) + len(text) > MAX_BUFFER_CHARS:
                        await self.send_error(
                            f"more than {MAX_BUFFER_CHARS} unspoken characters buffered; send 'flush'",
                            413,
                            "buffer_full",
                        )
                        continue
                    self.queue_text(text)
                elif kind == "flush":
                    self.queue_text("", final=True)
                    self.sentences.put_nowait(_FLUSHED)
                elif kind == "end":
                    self.queue_text("", final=True)
                    self.sentences.put_nowait(_END)
                elif kind == "cancel":
                    await self.cancel()
                else:
                    await self.send_error("unknown message type; expected text, flush, end or cancel")
        finally:
            if self.speaker_task is not None and not self.speaker_task.done():
                self.speaker_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self.speaker_task


def start_params(msg: dict[str, Any], services: Services) -> dict[str, Any]:
    """Validate the ``start`` message into ``build_request`` keyword arguments."""
    voice = msg.get("voice") or "alloy"
    if not isinstance(voice, str):
        raise ApiError("voice must be a string", param="voice")
    services.voices.get(voice)
    fmt = msg.get("format", "pcm")
    if fmt != "pcm":
        raise ApiError("only format 'pcm' (s16le mono) is streamed over the WebSocket", param="format")
    params: dict[str, Any] = {"voice": voice}
    timestamps = msg.get("timestamps", False)
    if not isinstance(timestamps, bool):
        raise ApiError("timestamps must be true or false", param="timestamps")
    if timestamps:
        params["timestamps"] = True
    for key, kind, lo, hi in (
        ("temperature", float, 0.0, 2.0),
        ("topk", int, 1, 2051),
        ("speed", float, 0.25, 4.0),
        ("seed", int, 0, 2**31 - 1),
    ):
        value = msg.get(key)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (kind is int and int(value) != value)
            or not lo <= value <= hi
        ):
            raise ApiError(f"{key} must be a number between {lo} and {hi}", param=key)
        params[key] = kind(value)
    return params
