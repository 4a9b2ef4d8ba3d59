"""``WS /api/stream``: incremental text in (e.g. LLM tokens), audio out as it is generated.

Protocol (see docs/websocket.md): the client sends ``start`` (voice + sampling), then any
number of ``text`` messages; complete sentences are spoken as soon as they are complete,
``flush`` speaks what is buffered, ``end`` finishes (``done``, then the server closes), and
``cancel`` stops the current audio and drops buffered text (barge-in) but keeps the session.
The server sends ``ready``, then per sentence ``segment_start``, binary PCM s16le frames and
``segment_end``; ``error`` events carry ``message``, ``status`` and ``code``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool

from echoforge.audio import float_to_pcm16
from echoforge.server.deps import Services, check_key, check_rate
from echoforge.server.errors import ApiError
from echoforge.text import split_sentences

log = logging.getLogger("echoforge.server.stream")
router = APIRouter(tags=["stream"])

START_TIMEOUT_S = 30.0
MAX_BUFFER_CHARS = 8192
# A sentence is complete once its end punctuation is followed by whitespace.
_SENTENCE_DONE = re.compile(r"[.!?…;:][\"')\]]*\s")
_END = object()


async def receive_message(ws: WebSocket) -> Any:
    """The next JSON message; ``ValueError`` for binary or malformed frames."""
    import json

    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    if message.get("text") is None:
        raise ValueError("binary frames are not accepted; send JSON text messages")
    try:
        return json.loads(message["text"])
    except json.JSONDecodeError:
        raise ValueError("messages must be JSON") from None


def split_complete(buffer: str) -> tuple[list[str], str]:
    """Complete sentences at the front of ``buffer`` and the unfinished rest."""
    last = None
    for m in _SENTENCE_DONE.finditer(buffer):
        last = m
    if last is None:
        return [], buffer
    return split_sentences(buffer[: last.end()]), buffer[last.end() :]


class _Session:
    """One connection: a receive loop feeding sentences to a speaking task."""

    def __init__(self, ws: WebSocket, services: Services, params: dict[str, Any]) -> None:
        self.ws = ws
        self.services = services
        self.params = params
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
            await self.speak(item)

    async def speak(self, text: str) -> None:
        try:
            request = await run_in_threadpool(self.services.synthesis.build_request, text=text, **self.params)
        except ApiError as exc:
            await self.send_error(exc.message, exc.status, exc.code)
            return
        await self.ws.send_json({"type": "segment_start", "text": text})
        try:
            async with contextlib.aclosing(self.services.synthesis.stream(request)) as chunks:
                async for chunk in chunks:
                    await self.ws.send_bytes(float_to_pcm16(chunk))
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.ws.send_json({"type": "segment_end", "cancelled": True})
            raise
        except WebSocketDisconnect:
            raise
        except Exception as exc:  # the engine failed on this sentence: report it, keep the session
            log.warning("stream synthesis failed: %s", exc, exc_info=not isinstance(exc, (ValueError, RuntimeError)))
            await self.send_error(f"synthesis failed: {exc}", 503, "engine_error")
        await self.ws.send_json({"type": "segment_end"})

    def queue_text(self, text: str, final: bool = False) -> None:
        self.buffer += text
        if final:
            sentences, self.buffer = split_sentences(self.buffer), ""
        else:
            sentences, self.buffer = split_complete(self.buffer)
        for s in sentences:
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
                        await self.send_error(f"more than {MAX_BUFFER_CHARS} unspoken characters buffered; send 'flush'", 413, "buffer_full")
                        continue
                    self.queue_text(text)
                elif kind == "flush":
                    self.queue_text("", final=True)
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


def _start_params(msg: dict[str, Any], services: Services) -> dict[str, Any]:
    """Validate the ``start`` message into ``build_request`` keyword arguments."""
    voice = msg.get("voice") or "alloy"
    if not isinstance(voice, str):
        raise ApiError("voice must be a string", param="voice")
    services.voices.get(voice)
    fmt = msg.get("format", "pcm")
    if fmt != "pcm":
        raise ApiError("only format 'pcm' (s16le mono) is streamed over the WebSocket", param="format")
    params: dict[str, Any] = {"voice": voice}
    for key, kind, lo, hi in (("temperature", float, 0.0, 2.0), ("topk", int, 1, 2051), ("speed", float, 0.25, 4.0), ("seed", int, 0, 2**31 - 1)):
        value = msg.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and int(value) != value) or not lo <= value <= hi:
            raise ApiError(f"{key} must be a number between {lo} and {hi}", param=key)
        params[key] = kind(value)
    return params


@router.websocket("/api/stream")
async def stream(ws: WebSocket) -> None:
    services: Services = ws.app.state.services
    await ws.accept()
    client = ws.client.host if ws.client else "unknown"
    try:
        try:
            msg = await asyncio.wait_for(receive_message(ws), START_TIMEOUT_S)
        except (TimeoutError, ValueError):
            await ws.send_json({"type": "error", "message": "expected a JSON 'start' message first", "status": 400, "code": "bad_start"})
            await ws.close(1008, "expected a start message")
            return
        if not isinstance(msg, dict) or msg.get("type") != "start":
            await ws.send_json({"type": "error", "message": "the first message must be {'type': 'start', ...}", "status": 400, "code": "bad_start"})
            await ws.close(1008, "expected a start message")
            return
        key = ws.query_params.get("api_key") or msg.get("api_key") or ws.headers.get("x-api-key")
        auth = ws.headers.get("authorization", "")
        if not key and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        try:
            principal = check_key(services, key if isinstance(key, str) else None, client, "/api/stream")
            check_rate(services, principal, "/api/stream")
            params = _start_params(msg, services)
        except ApiError as exc:
            await ws.send_json({"type": "error", "message": exc.message, "status": exc.status, "code": exc.code})
            await ws.close(1008 if exc.status in (401, 403) else 1000, exc.message[:120])
            return
        await ws.send_json({"type": "ready", "sample_rate": services.engine.sample_rate, "format": "pcm"})
        await _Session(ws, services, params).run()
        await ws.close()
    except WebSocketDisconnect:
        log.info("stream client disconnected")
    except RuntimeError as exc:  # sending on a socket the client already closed
        log.info("stream ended: %s", exc)
