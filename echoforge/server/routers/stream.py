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
import logging

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from echoforge.server.deps import Services, check_key, check_rate
from echoforge.server.errors import ApiError
from echoforge.server.services.speech_session import SpeechSession, receive_message, start_params

log = logging.getLogger("echoforge.server.stream")
router = APIRouter(tags=["stream"])

START_TIMEOUT_S = 30.0
# With API keys on and no key in the handshake, the key must come in the start message, soon.
UNAUTHENTICATED_START_TIMEOUT_S = 5.0


def _handshake_key(ws: WebSocket) -> str | None:
    key = ws.query_params.get("api_key") or ws.headers.get("x-api-key")
    auth = ws.headers.get("authorization", "")
    if not key and auth.lower().startswith("bearer "):
        key = auth[7:].strip()
    return key or None


async def _refuse(ws: WebSocket, exc: ApiError) -> None:
    await ws.send_json({"type": "error", "message": exc.message, "status": exc.status, "code": exc.code})
    await ws.close(1008 if exc.status in (401, 403, 429) else 1000, exc.message[:120])


@router.websocket("/api/stream")
async def stream(ws: WebSocket) -> None:
    services: Services = ws.app.state.services
    await ws.accept()
    client = ws.client.host if ws.client else "unknown"
    try:
        handshake_key = _handshake_key(ws)
        if services.keys.required and handshake_key is not None:
            try:  # a wrong key in the handshake is refused at once, not after the start message
                check_key(services, handshake_key, client, "/api/stream")
            except ApiError as exc:
                await _refuse(ws, exc)
                return
        timeout = START_TIMEOUT_S
        if services.keys.required and handshake_key is None:
            timeout = UNAUTHENTICATED_START_TIMEOUT_S
        try:
            msg = await asyncio.wait_for(receive_message(ws), timeout)
        except (TimeoutError, ValueError):
            await ws.send_json(
                {
                    "type": "error",
                    "message": "expected a JSON 'start' message first",
                    "status": 400,
                    "code": "bad_start",
                }
            )
            await ws.close(1008, "expected a start message")
            return
        if not isinstance(msg, dict) or msg.get("type") != "start":
            await ws.send_json(
                {
                    "type": "error",
                    "message": "the first message must be {'type': 'start', ...}",
                    "status": 400,
                    "code": "bad_start",
                }
            )
            await ws.close(1008, "expected a start message")
            return
        key = handshake_key or msg.get("api_key")
        try:
            principal = check_key(services, key if isinstance(key, str) else None, client, "/api/stream")
            check_rate(services, principal, "/api/stream")
            params = start_params(msg, services)
        except ApiError as exc:
            await _refuse(ws, exc)
            return
        await ws.send_json({"type": "ready", "sample_rate": services.engine.sample_rate, "format": "pcm"})
        await SpeechSession(ws, services, params).run()
        await ws.close()
    except WebSocketDisconnect:
        log.info("stream client disconnected")
    except RuntimeError as exc:  # sending on a socket the client already closed
        log.info("stream ended: %s", exc)
