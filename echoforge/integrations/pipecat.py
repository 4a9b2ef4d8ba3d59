"""A pipecat TTS service that speaks through a running EchoForge server (extra ``[pipecat]``).

:class:`EchoForgeTTSService` follows pipecat's WebSocket TTS services (``InterruptibleTTSService``):

* **One persistent connection** to the server's WebSocket (``WS /api/stream``, docs/websocket.md),
  opened by the first text and kept: ``start`` with the voice and sampling fields, answered by
  ``ready`` with the audio's sample rate. A background task receives the PCM and appends it to
  pipecat's audio context of the turn being spoken (resampled to the pipeline's rate).
* **One context per turn**: :meth:`~EchoForgeTTSService.run_tts` only sends text. With
  sentence aggregation (pipecat's default) each sentence is sent and flushed; in TOKEN mode the
  tokens go as they come and the *server* cuts sentences (one rule, ``echoforge.text``), so six
  tokens are one utterance, not six sessions. The turn's end (``flush_audio``) speaks the rest.
* **Reconnect**: a dropped connection is reopened by pipecat's receive loop (with back-off);
  changing voice or sampling settings reopens it with a new ``start``.
* Interruption: pipecat's ``InterruptibleTTSService`` reconnects when the bot is interrupted
  while speaking; closing the socket stops the server's synthesis at once.
* **Word timestamps** (pipecat's word-timestamp TTS convention, as Cartesia's or ElevenLabs'
  services): the session asks the server for word events (``"timestamps": true``), and each
  word goes to :meth:`add_word_timestamps` with its start time from the beginning of the turn's
  audio, in order with the audio (``push_text_frames=False``: the base class pushes one
  ``TTSTextFrame`` per word when its audio plays). So after an interruption the assistant's
  context holds the words the user heard, up to the last one spoken — not whole sentences.
  ``word_timestamps=False`` restores sentence text frames.

* Voice: an EchoForge voice id, name or OpenAI alias (``alloy`` …), as everywhere else.
* Tone: ``tone="gently"`` (or an inline ``(excited) …`` in the text) selects the emotion's
  sampling parameters on the server — the same tone modifiers as every EchoForge input. A
  sentence's own modifier wins and is carried on to the following sentences of the same turn.

Voice, tone and sampling fields are runtime settings (``TTSUpdateSettingsFrame``); they apply
from the next sentence (the connection is reopened with them).
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame
from pipecat.services.settings import NOT_GIVEN, NotGiven, TTSSettings
from pipecat.services.tts_service import InterruptibleTTSService
from websockets.protocol import State

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


class EchoForgeTTSService(InterruptibleTTSService):
    """EchoForge (CSM-1B, or its labelled fallback) as a pipecat TTS service over one WebSocket."""

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
        word_timestamps: bool = True,
        **kwargs: Any,
    ) -> None:
        """Point the service at an EchoForge server.

        Args:
            base_url: the server, e.g. ``http://127.0.0.1:8000`` (its ``/api/stream`` is used).
            api_key: sent as ``Authorization: Bearer`` when the server requires keys.
            voice: EchoForge voice id, name or OpenAI alias.
            tone: default tone modifier / emotion (``gently``, ``excited`` …).
            settings: further runtime settings (sampling); its values win over ``voice``/``tone``.
            open_timeout_s: how long to wait for the WebSocket handshake and the ``ready`` event.
            word_timestamps: report each word when its audio plays (``TTSTextFrame`` per word);
                ``False``: pipecat's sentence text frames.
            **kwargs: passed to pipecat's ``TTSService`` (e.g. ``sample_rate``, ``text_aggregation_mode``).
        """
        store = self.Settings(model=None, voice=voice, language=None, tone=tone)
        for name in _SAMPLING:
            setattr(store, name, None)
        if settings is not None:
            store.apply_update(settings)
        kwargs.setdefault("push_text_frames", not word_timestamps)
        super().__init__(push_start_frame=True, push_stop_frames=True, settings=store, **kwargs)
        self._word_timestamps = word_timestamps
        # Word times: the server's are from the start of each segment (sentence); pipecat's from
        # the start of the turn's audio. Audio received for the turn now playing, and where the
        # current segment started in it.
        self._turn_audio: str | None = None
        self._turn_samples = 0
        self._segment_base_s = 0.0
        self._url = stream_url(base_url)
        self._api_key = api_key
        self._open_timeout_s = open_timeout_s
        self._tone = ToneCarry()
        self._tone_context: str | None = None
        self._receive_task: asyncio.Task | None = None
        self._in_rate: int | None = None  # the server's audio rate (its ``ready`` event)
        self._odd = b""  # a sample split across two WebSocket frames
        # Contexts whose text was sent, in order, until the server says their flush is spoken:
        # the server speaks in order, so the head of this queue owns the audio that arrives.
        self._pending: collections.deque[str] = collections.deque()
        self._open: str | None = None  # the context whose text is still unflushed
        self.sessions = 0  # WebSocket sessions opened (one per connection, not per sentence)

    def can_generate_metrics(self) -> bool:
        """TTFB and usage metrics are reported."""
        return True

    def _start_message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": "start", "voice": self._settings.voice or "alloy", "format": "pcm"}
        if self._word_timestamps:
            msg["timestamps"] = True
        for name in _SAMPLING:
            value = getattr(self._settings, name)
            if value is not None:
                msg[name] = value
        return msg

    def _with_tone(self, text: str, context_id: str) -> str:
        """Prefix the turn's tone to a sentence that has no modifier of its own."""
        new_turn = context_id != self._tone_context
        if new_turn:  # a new turn starts from the configured tone
            self._tone_context = context_id
            self._tone.default = self._settings.tone or None
            self._tone.reset()
        if self._is_streaming_tokens:  # tokens: the tone once, before the turn's first token
            tone = self._tone.default if new_turn else None
            return f"({tone}) {text}" if tone and not text.lstrip().startswith(("(", "[")) else text
        tone = self._tone.see(text)
        return f"({tone}) {text}" if tone else text

    # ------------------------------------------------------------------ connection
    # Opened by the first text (and kept): a voice fixed by a settings update before the first
    # sentence is never refused first.

    async def _update_settings(self, delta: TTSSettings) -> dict[str, Any]:
        changed = await super()._update_settings(delta)
        if changed and self._websocket is not None:  # voice / sampling live in the start message
            await self._disconnect()
            await self._connect()
        return changed

    async def _connect(self) -> None:
        await super()._connect()
        await self._connect_websocket()
        if self._websocket is not None and self._receive_task is None:
            self._receive_task = self.create_task(self._receive_task_handler(self._report_error))

    async def _disconnect(self) -> None:
        await super()._disconnect()
        if self._receive_task is not None:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        await self._disconnect_websocket()

    async def _connect_websocket(self) -> None:
        if self._websocket is not None and self._websocket.state is State.OPEN:
            return
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else None
        try:
            ws = await self._websocket_connect(
                self._url, additional_headers=headers, open_timeout=self._open_timeout_s, max_size=None
            )
            await ws.send(json.dumps(self._start_message()))
            ready = json.loads(await asyncio.wait_for(ws.recv(), self._open_timeout_s))
        except Exception as exc:  # unreachable, handshake refused, no ready in time
            self._websocket = None
            await self.push_error(error_msg=f"EchoForge server at {self._url}: {exc}", exception=exc)
            await self._call_event_handler("on_connection_error", str(exc))
            return
        if ready.get("type") != "ready":
            await ws.close()
            self._websocket = None
            message = f"EchoForge refused the session: {ready.get('message', ready)}"
            await self.push_error(error_msg=message)
            await self._call_event_handler("on_connection_error", message)
            return
        self._websocket = ws
        self._in_rate = int(ready["sample_rate"])
        self._odd = b""
        self._pending.clear()
        self._open = None
        self.sessions += 1
        await self._call_event_handler("on_connected")

    async def _disconnect_websocket(self) -> None:
        ws, self._websocket = self._websocket, None
        try:
            await self.stop_all_metrics()
            if ws is not None:
                await ws.close()  # the server stops synthesizing at once
        except Exception as exc:
            logger.debug(f"{self}: closing the EchoForge WebSocket: {exc}")
        finally:
            if ws is not None:
                await self._call_event_handler("on_disconnected")

    async def _receive_messages(self) -> None:
        ws = self._websocket
        if ws is None:
            return
        async for message in ws:
            if isinstance(message, bytes):
                await self._audio(message)
                continue
            event = json.loads(message)
            if event.get("type") == "segment_start":
                self._turn_owner()
                self._segment_base_s = self._turn_samples / self._in_rate if self._in_rate else 0.0
            elif event.get("type") == "words":
                await self._words(event.get("words") or [])
            elif event.get("type") == "flushed":
                if self._pending:
                    self._pending.popleft()
            elif event.get("type") == "error":
                await self.push_error(error_msg=f"EchoForge: {event.get('message')} ({event.get('code')})")

    def _turn_owner(self) -> str | None:
        """The turn the server is speaking now; its audio count restarts when the turn changes."""
        context_id = self._pending[0] if self._pending else self.get_active_audio_context_id()
        if context_id != self._turn_audio:
            self._turn_audio, self._turn_samples, self._segment_base_s = context_id, 0, 0.0
        return context_id

    async def _words(self, words: list[dict[str, Any]]) -> None:
        """The server's word events → pipecat word timestamps (from the start of the turn's audio)."""
        context_id = self._turn_owner()
        if context_id is None or not words or not self.audio_context_available(context_id):
            return  # words of an interrupted turn
        await self.add_word_timestamps(
            [(str(w["word"]), self._segment_base_s + float(w["start_s"])) for w in words], context_id
        )

    async def _audio(self, data: bytes) -> None:
        data = self._odd + data
        cut = len(data) & ~1
        pcm, self._odd = data[:cut], data[cut:]
        if not pcm:
            return
        self._turn_owner()
        self._turn_samples += len(pcm) // 2
        if self._in_rate and self._in_rate != self.sample_rate:
            pcm = await self._resampler.resample(pcm, self._in_rate, self.sample_rate)
        context_id = self._pending[0] if self._pending else self.get_active_audio_context_id()
        if context_id is None or not pcm or not self.audio_context_available(context_id):
            return  # audio of an interrupted turn
        await self.stop_ttfb_metrics()
        await self.append_to_audio_context(
            context_id, TTSAudioRawFrame(pcm, self.sample_rate, 1, context_id=context_id)
        )

    async def _send(self, message: dict[str, Any]) -> None:
        ws = self._websocket
        if ws is None or ws.state is not State.OPEN:
            await self._connect()
            ws = self._websocket
        if ws is None:
            raise ConnectionError(f"EchoForge server at {self._url} is not connected")
        await ws.send(json.dumps(message))

    async def _send_text(self, text: str, context_id: str) -> None:
        if self._open != context_id:
            if self._open is not None:  # the previous turn never flushed: close it first
                await self._flush()
            await self._send({"type": "text", "text": ""})  # (re)connects if needed, before queueing
            self._pending.append(context_id)
            self._open = context_id
        await self._send({"type": "text", "text": text})

    async def _flush(self) -> None:
        if self._open is None:
            return
        self._open = None
        if self._websocket is not None and self._websocket.state is State.OPEN:
            await self._websocket.send(json.dumps({"type": "flush"}))

    async def flush_audio(self, context_id: str | None = None) -> None:
        """The turn's text is complete: speak what the server still buffers."""
        await self._flush()

    async def _handle_interruption(self, frame, direction) -> None:  # noqa: ANN001 - pipecat's types
        await super()._handle_interruption(frame, direction)
        self._pending.clear()  # what the server still sends belongs to interrupted turns
        self._open = None
        self._turn_audio, self._turn_samples, self._segment_base_s = None, 0, 0.0

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Send text of the turn ``context_id``; its audio arrives on the receive task.

        Args:
            text: a sentence (pipecat's aggregation) or a token (TOKEN mode), possibly with a
                tone modifier.
            context_id: pipecat's audio context for this turn.

        Yields:
            ``None`` (audio follows on the audio context), or an ``ErrorFrame`` when the server
            cannot be reached.
        """
        try:
            await self._send_text(self._with_tone(text, context_id), context_id)
            if not self._is_streaming_tokens:  # a whole sentence: speak it now
                await self._flush()
            await self.start_tts_usage_metrics(text)
        except Exception as exc:
            yield ErrorFrame(error=f"EchoForge server at {self._url}: {exc}")
            return
        yield None
