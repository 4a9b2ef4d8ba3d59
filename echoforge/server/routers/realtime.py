"""``WS /v1/realtime``: the voice agent over the OpenAI Realtime API (docs/realtime.md).

The official ``openai`` SDK (``OpenAI(websocket_base_url="ws://host:8000/v1").realtime.connect(model=…)``)
and other Realtime clients talk to the same agent as ``/api/agent``: this router only
authenticates, builds a :class:`~echoforge.agent.pipeline.VoiceAgent` from the shared models and
hands the socket to :class:`~echoforge.agent.realtime.RealtimeSession`, the protocol adapter.

The key comes as ``Authorization: Bearer <key>`` (like the rest of ``/v1``), ``X-API-Key``,
``?api_key=`` or, from browsers, the ``openai-insecure-api-key.<key>`` subprotocol; the
``realtime`` subprotocol is selected when offered. A refused key gets an ``error`` event, then a
1008 close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from echoforge.agent.realtime import RealtimeError, RealtimeSession, new_id
from echoforge.server.routers import stream as _stream  # one WebSocket handshake: /api/stream's
from echoforge.server.routers.agent import _services, _settings_and_engine, agent_models, new_agent

log = logging.getLogger("echoforge.server.realtime")
router = APIRouter(tags=["agent"])

KEY_PROTOCOL = "openai-insecure-api-key."


def _key(ws: WebSocket) -> str | None:
    key = _stream._handshake_key(ws)
    for proto in ws.scope.get("subprotocols") or []:
        if key is None and proto.startswith(KEY_PROTOCOL):
            key = proto[len(KEY_PROTOCOL) :] or None
    return key


def _authorize(ws: WebSocket) -> None:
    """The key check and rate limit of ``/v1`` (one request per session); raises ``ApiError``."""
    services = _services(ws.app)
    if services is None or not hasattr(services, "keys"):
        return
    from echoforge.server.deps import check_key, check_rate

    principal = check_key(services, _key(ws), ws.client.host if ws.client else "unknown", "/v1/realtime")
    check_rate(services, principal, "/v1/realtime")


def _error(message: str, code: str | None, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"type": "error", "event_id": new_id("event"),
            "error": {"type": type_, "code": code, "message": message, "param": None, "event_id": None}}  # fmt: skip


async def _new_session(ws: WebSocket, outbox: asyncio.Queue) -> RealtimeSession:
    _, engine = _settings_and_engine(ws.app)
    models = await agent_models(ws.app)
    agent = new_agent(ws.app, engine, models)
    store = getattr(_services(ws.app), "voices", None)
    return RealtimeSession(
        agent,
        outbox.put_nowait,
        model=ws.query_params.get("model") or "echoforge",
        check_voice=store.get if store is not None else None,
        transcriber=models.settings.stt_model or "whisper-tiny.en",
    )


async def _send_all(ws: WebSocket, outbox: asyncio.Queue) -> None:
    while True:
        event = await outbox.get()
        await ws.send_text(json.dumps(event, default=str))


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket) -> None:
    offered = ws.scope.get("subprotocols") or []
    await ws.accept(subprotocol="realtime" if "realtime" in offered else None)
    try:
        try:
            _authorize(ws)
        except Exception as exc:  # ApiError: a missing/wrong key, or the rate limit
            await ws.send_json(_error(getattr(exc, "message", str(exc)), getattr(exc, "code", None)))
            await ws.close(1008, getattr(exc, "message", "refused")[:120])
            return
        outbox: asyncio.Queue = asyncio.Queue()
        try:
            session = await _new_session(ws, outbox)
        except Exception as exc:  # models that cannot load: say so, no traceback to the client
            log.exception("realtime: the agent could not start")
            await ws.send_json(_error(f"the voice agent could not start: {exc}", "agent_unavailable", "server_error"))
            await ws.close(1011, "agent unavailable")
            return
        sender = asyncio.create_task(_send_all(ws, outbox), name="realtime-send")
        await session.start()
        pump = asyncio.create_task(session.pump(), name="realtime-pump")
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is not None:
                    await session.handle_message(message["text"])
                elif message.get("bytes") is not None:
                    session.error(RealtimeError("binary frames are not part of the Realtime API: send audio as "
                                                "input_audio_buffer.append events", "invalid_event"))  # fmt: skip
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            await session.stop()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
    except WebSocketDisconnect:
        log.info("realtime client disconnected")
    except RuntimeError as exc:  # sending on a socket the client already closed
        log.info("realtime session ended: %s", exc)
