"""``WS /api/agent``: the live voice agent over a WebSocket.

Client → server: a JSON ``start`` message first (``sample_rate`` of the mic PCM, default 16000;
optional ``voice``, ``style`` sliders, ``api_key``), then binary frames of PCM s16le mono and JSON
control messages: ``{"type": "stop" | "pause" | "resume" | "interrupt"}``,
``{"type": "style", "values": {"warmth": 0..1, ...}}``, ``{"type": "voice", "voice": "..."}``.

Server → client: ``ready`` (with the output ``sample_rate``), then JSON events (``state``,
``transcript``, ``retrieval``, ``llm_text``, ``assistant``, ``latency``, ``interrupt``, ``log``,
``error``, …) and binary PCM s16le frames of agent audio at the engine's rate. On ``interrupt`` the
client must drop whatever audio it still has queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from fastapi import APIRouter, FastAPI, WebSocket, WebSocketDisconnect

from echoforge.agent.config import agent_settings
from echoforge.agent.frames import OutputAudioRawFrame, frame_event
from echoforge.audio import float_to_pcm16
from echoforge.server.routers import stream as _stream  # one WebSocket handshake: /api/stream's

log = logging.getLogger("echoforge.server.agent")
router = APIRouter(tags=["agent"])

START_TIMEOUT_S = 30.0  # with keys on and none in the handshake: /api/stream's 5 s instead
MAX_INPUT_RATE = 192_000


def _services(app: FastAPI) -> Any:
    return getattr(app.state, "services", None)


def _settings_and_engine(app: FastAPI) -> tuple[Any, Any]:
    """Settings and engine from the app (``app.state.services``; plain ``app.state`` attributes also work)."""
    services = _services(app)
    settings = getattr(services, "settings", None) or getattr(app.state, "settings", None)
    engine = getattr(services, "engine", None) or getattr(app.state, "engine", None)
    if settings is None:
        from echoforge.config import get_settings

        settings = get_settings()
    if engine is None:
        raise RuntimeError("no TTS engine on app.state")
    return settings, engine


async def agent_models(app: FastAPI) -> Any:
    """The shared agent models, loaded (and warmed up) on first use, in a thread."""
    lock = app.state.__dict__.setdefault("_agent_models_lock", asyncio.Lock())
    async with lock:
        models = getattr(app.state, "agent_models", None)
        if models is None:
            from echoforge.agent.models import AgentModels

            settings, _ = _settings_and_engine(app)
            agent = agent_settings(settings)
            models = await asyncio.to_thread(AgentModels.load, agent, settings.data_dir)
            await asyncio.to_thread(models.warm_up)
            app.state.agent_models = models
        return models


def new_agent(app: FastAPI, engine: Any, models: Any) -> Any:
    """One agent session on the app's engine and loaded models (``/api/agent`` and ``/v1/realtime``)."""
    from echoforge.agent.pipeline import VoiceAgent, word_aligner  # the agent package loads with the first session

    return VoiceAgent(
        engine,
        models.settings,
        models.stt,
        models.llm,
        models.kb,
        models.emotion_detector,
        vad=models.new_detector(),
        voice_prompt=_voice_prompts(app, engine, models.settings.speaker),
        synthesize=_synthesize(app),
        aligner=word_aligner(engine, models.settings),
    )


def _synthesize(app: FastAPI) -> Any:
    """The synthesis service's stream, when the app has one: the agent's sentences are admitted,
    counted and streamed like every other request (no private path to the engine)."""
    synthesis = getattr(_services(app), "synthesis", None)
    return synthesis.stream if synthesis is not None else None


def _voice_prompts(app: FastAPI, engine: Any, speaker: int) -> Any:
    """The saved voices' prompts (pinned reference clips) for the agent, when the app has a voice store."""
    from echoforge.agent.pipeline import voice_prompts

    store = getattr(_services(app), "voices", None)
    return voice_prompts(store, engine, speaker) if store is not None else None


def _keys_required(ws: WebSocket) -> bool:
    services = _services(ws.app)
    return services is not None and bool(getattr(getattr(services, "keys", None), "required", False))


def _authorize(ws: WebSocket, msg: dict[str, Any]) -> None:
    """API-key check: the handshake's key (``/api/stream``'s helper), else the start message's
    (browsers cannot set WebSocket headers); then the rate limit."""
    services = _services(ws.app)
    if services is None or not hasattr(services, "keys"):
        return
    from echoforge.server.deps import check_key, check_rate

    key = _stream._handshake_key(ws) or msg.get("api_key")
    client = ws.client.host if ws.client else "unknown"
    principal = check_key(services, key if isinstance(key, str) else None, client, "/api/agent")
    check_rate(services, principal, "/api/agent")


async def _check_handshake(ws: WebSocket) -> tuple[bool, float]:
    """``/api/stream``'s handshake rules: ``(go on, start timeout)``.

    With API keys on, a wrong key in the handshake is refused at once (not after the start
    message), and without one the key must come in the start message within
    ``UNAUTHENTICATED_START_TIMEOUT_S`` (5 s) instead of the ordinary start timeout.
    """
    if not _keys_required(ws):
        return True, START_TIMEOUT_S
    from echoforge.server.deps import check_key
    from echoforge.server.errors import ApiError

    key = _stream._handshake_key(ws)
    if key is None:
        return True, _stream.UNAUTHENTICATED_START_TIMEOUT_S
    try:
        check_key(_services(ws.app), key, ws.client.host if ws.client else "unknown", "/api/agent")
    except ApiError as exc:
        await _stream._refuse(ws, exc)
        return False, 0.0
    return True, START_TIMEOUT_S


async def _send_events(ws: WebSocket, agent: Any) -> None:
    async for frame in agent.events():
        if isinstance(frame, OutputAudioRawFrame):
            await ws.send_bytes(float_to_pcm16(frame.audio))
            continue
        event = frame_event(frame)
        if event is not None:
            await ws.send_text(json.dumps(event, default=str))


async def _control(agent: Any, msg: dict[str, Any]) -> bool:
    """Apply one control message; False when the session should end."""
    kind = msg.get("type")
    if kind == "stop":
        return False
    if kind == "pause":
        await agent.pause()
    elif kind == "resume":
        await agent.resume()
    elif kind == "interrupt":
        await agent.interrupt("manual")
    elif kind in ("style", "emotion"):
        values = msg.get("values")
        if not isinstance(values, dict):
            raise ValueError("'values' must be an object of slider values")
        agent.set_style(values)
    elif kind == "voice":
        agent.set_voice(msg.get("voice"))
    else:
        raise ValueError(f"unknown message type {kind!r}")
    return True


@router.websocket("/api/agent")
async def agent_socket(ws: WebSocket) -> None:
    await ws.accept()
    try:
        go_on, start_timeout = await _check_handshake(ws)
        if not go_on:
            return
        try:
            raw = await asyncio.wait_for(ws.receive_text(), start_timeout)
            msg = json.loads(raw)
            if not isinstance(msg, dict) or msg.get("type") != "start":
                raise ValueError
        except (TimeoutError, ValueError, KeyError):
            await ws.send_json({"type": "error", "message": "the first message must be {'type': 'start', ...}", "code": "bad_start"})
            await ws.close(1008, "expected a start message")
            return
        try:
            _authorize(ws, msg)
            rate = int(msg.get("sample_rate", 16_000))
            if not 8_000 <= rate <= MAX_INPUT_RATE:
                raise ValueError(f"sample_rate must be between 8000 and {MAX_INPUT_RATE}")
        except Exception as exc:  # ApiError (auth/rate) or ValueError
            message = getattr(exc, "message", str(exc))
            await ws.send_json({"type": "error", "message": message, "code": getattr(exc, "code", "bad_start")})
            await ws.close(1008, message[:120])
            return
        settings, engine = _settings_and_engine(ws.app)
        await ws.send_json({"type": "log", "message": "loading agent models…"})
        models = await agent_models(ws.app)
        agent = new_agent(ws.app, engine, models)
        if msg.get("voice"):
            agent.set_voice(str(msg["voice"]))
        if isinstance(msg.get("style"), dict):
            agent.set_style(msg["style"])
        info = getattr(models, "knowledge_base_info", None)
        kb = info() if callable(info) else None
        await ws.send_json({"type": "ready", "sample_rate": engine.sample_rate, "input_sample_rate": rate, "format": "pcm_s16le",
                            "engine": engine.name, "knowledge_base": kb})  # fmt: skip
        await agent.start()
        sender = asyncio.create_task(_send_events(ws, agent))
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("bytes") is not None:
                    data = message["bytes"]
                    if len(data) % 2:
                        data = data[:-1]
                    await agent.push_audio(data, rate)
                elif message.get("text") is not None:
                    try:
                        if not await _control(agent, json.loads(message["text"])):
                            break
                    except (ValueError, AttributeError) as exc:
                        await ws.send_json({"type": "error", "message": str(exc), "code": "bad_message"})
        finally:
            await agent.stop()
            await asyncio.sleep(0)  # let the sender flush the final state event
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
        with contextlib.suppress(Exception):
            await ws.close()
    except WebSocketDisconnect:
        log.info("agent client disconnected")
    except RuntimeError as exc:  # sending on a socket the client already closed
        log.info("agent session ended: %s", exc)
