"""A pipecat TTS service that speaks through a running EchoForge server (extra ``[pipecat]``).

:class:`EchoForgeTTSService` is a pipecat ``TTSService``: pipecat aggregates the LLM's text into
sentences and calls :meth:`EchoForgeTTSService.run_tts` for each; that opens one session on the
server's WebSocket (``WS /api/stream``, docs/websocket.md) — ``start`` with the voice and
sampling fields, the sentence, ``end`` — and yields ``TTSAudioRawFrame`` as the PCM arrives
(resampled by pipecat to the pipeline's output rate when the engine's differs).

* Voice: an EchoForge voice id, name or OpenAI alias (``alloy`` …), as everywhere else.
* Tone: ``tone="gently"`` (or an inline ``(excited) …`` in the text) selects the emotion's
  sampling parameters on the server — the same tone modifiers as every EchoForge input. A
  sentence's own modifier wins and is carried on to the following sentences of the same turn.
* Interruption: pipecat cancels ``run_tts`` on an ``InterruptionFrame``; leaving the generator
  closes the WebSocket, and the server stops that stream's synthesis at once.

Voice, tone and sampling fields are runtime settings (``TTSUpdateSettingsFrame``); they apply
from the next sentence.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import websockets
from pipecat.frames.frames import ErrorFrame, Frame
from pipecat.services.settings import NOT_GIVEN, NotGiven, TTSSettings
from pipecat.services.tts_service import TTSService
from websockets.asyncio.client import ClientConnection, connect

from echoforge.integrations import ToneCarry

_SAMPLING = ("temperature", "topk", "speed", "seed")


def stream_url(base_url: str) -> str:
    """``http://host:8000`` (or ``ws://…``, with or without ``/api/stream``) → the stream WebSocket URL."""
    parts = urlsplit(base_url.rstrip("/"))
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"base_url must be http(s):// or ws(s)://HOST:PORT, not {base_url!r}")
    path = parts.path if parts.path.endswith("/api/stream") else parts.path + "/api/stream"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


@dataclass
class EchoForgeTTSSettings(TTSSettings):
    """Runtime settings of :class:`EchoForgeTTSService` (``None``: the server's default).

    Parameters:
        tone: a tone modifier or emotion (``gently``, ``calm``, ``excited`` …) for sentences
            that carry none of their own.
        temperature: sampling temperature (0 = greedy).
        topk: top-k sampling.
        speed: speaking rate, 0.25–4.
        seed: sampling seed.
    """

    tone: str | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    temperature: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    topk: int | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    speed: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    seed: int | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)


class EchoForgeTTSService(TTSService):
    """EchoForge (CSM-1B, or its labelled fallback) as a pipecat TTS service."""

    Settings = EchoForgeTTSSettings
    _settings: EchoForgeTTSSettings

    def __init__(
        self,
        *,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        voice: str = "alloy",
        tone: str | None = None,
        settings: EchoForgeTTSSettings | None = None,
        open_timeout_s: float = 10.0,
        **kwargs: Any,
    ) -> None:
        """Point the service at an EchoForge server.

        Args:
            base_url: the server, e.g. ``http://127.0.0.1:8000`` (its ``/api/stream`` is used).
            api_key: sent as ``Authorization: Bearer`` when the server requires keys.
            voice: EchoForge voice id, name or OpenAI alias.
            tone: default tone modifier / emotion (``gently``, ``excited`` …).
            settings: further runtime settings (sampling); its values win over ``voice``/``tone``.
            open_timeout_s: how long to wait for the WebSocket handshake.
            **kwargs: passed to pipecat's ``TTSService`` (e.g. ``sample_rate``).
        """
        store = self.Settings(model=None, voice=voice, language=None, tone=tone)
        for name in _SAMPLING:
            setattr(store, name, None)
        if settings is not None:
            store.apply_update(settings)
        super().__init__(push_start_frame=True, push_stop_frames=True, settings=store, **kwargs)
        self._url = stream_url(base_url)
        self._api_key = api_key
        self._open_timeout_s = open_timeout_s
        self._tone = ToneCarry()
        self._tone_context: str | None = None
        self._websocket: ClientConnection | None = None  # the session of the sentence being spoken

    def can_generate_metrics(self) -> bool:
        """TTFB and usage metrics are reported."""
        return True

    def _start_message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": "start", "voice": self._settings.voice or "alloy", "format": "pcm"}
        for name in _SAMPLING:
            value = getattr(self._settings, name)
            if value is not None:
                msg[name] = value
        return msg

    def _with_tone(self, text: str, context_id: str) -> str:
        """Prefix the turn's tone to a sentence that has no modifier of its own."""
        if context_id != self._tone_context:  # a new turn starts from the configured tone
            self._tone_context = context_id
            self._tone.default = self._settings.tone or None
            self._tone.reset()
        tone = self._tone.see(text)
        return f"({tone}) {text}" if tone else text

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Speak one sentence: audio frames as the server streams them.

        Args:
            text: the sentence (pipecat's aggregation), possibly with a tone modifier.
            context_id: pipecat's audio context for this turn.

        Yields:
            ``TTSAudioRawFrame`` at the service's sample rate; an ``ErrorFrame`` when the server
            refuses the session (unknown voice, bad key …) or cannot be reached.
        """
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else None
        errors: list[str] = []
        try:
            async with connect(
                self._url, additional_headers=headers, open_timeout=self._open_timeout_s, close_timeout=2, max_size=None
            ) as ws:
                self._websocket = ws
                await ws.send(json.dumps(self._start_message()))
                ready = json.loads(await ws.recv())
                if ready.get("type") != "ready":
                    yield ErrorFrame(error=f"EchoForge refused the session: {ready.get('message', ready)}")
                    return
                await ws.send(json.dumps({"type": "text", "text": self._with_tone(text, context_id)}))
                await ws.send(json.dumps({"type": "end"}))
                await self.start_tts_usage_metrics(text)
                async for frame in self._stream_audio_frames_from_iterator(
                    _pcm(ws, errors), in_sample_rate=int(ready["sample_rate"]), context_id=context_id
                ):
                    await self.stop_ttfb_metrics()
                    yield frame
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            errors.append(f"EchoForge server at {self._url}: {exc}")
        finally:
            # Also on interruption: pipecat cancels this generator, the socket closes above and
            # the server stops synthesizing this sentence.
            self._websocket = None
            await self.stop_ttfb_metrics()
        for message in errors:
            yield ErrorFrame(error=message)


async def _pcm(ws: ClientConnection, errors: list[str]) -> AsyncIterator[bytes]:
    """The session's audio until ``done``; ``error`` events are collected into ``errors``."""
    async for message in ws:
        if isinstance(message, bytes):
            yield message
            continue
        event = json.loads(message)
        if event.get("type") == "error":
            errors.append(f"EchoForge: {event.get('message')} ({event.get('code')})")
        elif event.get("type") == "done":
            return
