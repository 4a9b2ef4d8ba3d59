"""The OpenAI Realtime API (GA event set) as a protocol adapter over :class:`VoiceAgent`.

One :class:`RealtimeSession` is one ``WS /v1/realtime`` connection. It turns the client's JSON
events into calls on the same agent core as ``/api/agent`` (VAD → STT → retrieval + LLM →
grounding checks → TTS → paced output) and the core's frames into Realtime server events:

==================================  =====================================================
client event                        what the agent does
==================================  =====================================================
``input_audio_buffer.append``       server VAD: the mic audio goes into the agent (its VAD
                                    ends the turn, its STT transcribes, its LLM answers);
                                    ``turn_detection: null``: buffered until ``commit``
``input_audio_buffer.commit``       the buffer becomes a user item, transcribed by the
                                    agent's recogniser (no reply until ``response.create``)
``conversation.item.create``        a user text/audio message (or an assistant message for
                                    the history)
``response.create``                 the pending user items go to the LLM stage as one turn
``response.cancel``                 an interruption: what was played stays in the history
``conversation.item.truncate``      the assistant turn keeps only the words heard
==================================  =====================================================

Field names and event shapes follow ``openai.types.realtime`` (the official SDK's types).
Audio in and out is PCM s16le mono at 24 kHz, base64 in JSON; the engine's audio is resampled
as a stream (no seams). ``semantic_vad`` is the agent's smart-turn end of turn. Anything the
session cannot do (tools, G.711, images…) is refused with an ``error`` event in OpenAI's shape;
the socket stays open.

Why one module of ~900 lines: the GA event set is large (about 30 client and server events), and
every handler reads and writes the same session state — the conversation items, the response in
flight, the input buffer and the audio played so far. A split by event family would pass that
state between modules without making any part simpler; the router
(``server/routers/realtime.py``) keeps the socket, authentication and session setup apart.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from echoforge.agent.conversation import Turn
from echoforge.agent.frames import (
    AssistantTurnFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OutputAudioRawFrame,
    TranscriptionFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from echoforge.agent.vad import SAMPLE_RATE, TurnDetector, VADEvent, VADParams
from echoforge.audio import StreamResampler, float_to_pcm16, pcm16_to_float

log = logging.getLogger("echoforge.agent.realtime")

PCM_RATE = 24_000  # the Realtime API's audio/pcm: always 24 kHz s16le mono
AUDIO_FORMAT = {"type": "audio/pcm", "rate": PCM_RATE}
MAX_BUFFER_S = 300  # manual turns: audio held until commit (OpenAI's buffer limit is 15 MiB ≈ 5 min)
MIN_COMMIT_MS = 100  # OpenAI refuses to commit less than 100 ms
MAX_TEXT_CHARS = 16_384  # instructions or one message's text
# semantic_vad's eagerness → how long a pause the smart-turn model judged unfinished may last (ms)
EAGERNESS_WAIT_MS = {"high": 600, "medium": 1200, "auto": 1200, "low": 2500}


def new_id(prefix: str) -> str:
    """An id in OpenAI's style: ``event_…``, ``item_…``, ``resp_…``, ``sess_…``."""
    return f"{prefix}_{secrets.token_hex(10)}"


class RealtimeError(Exception):
    """A client event the session refuses: sent as an ``error`` event, the session goes on."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None,
                 type: str = "invalid_request_error") -> None:  # fmt: skip
        super().__init__(message)
        self.message, self.code, self.param, self.type = message, code, param, type


def _unsupported(what: str, param: str) -> RealtimeError:
    return RealtimeError(f"{what} is not supported by EchoForge's Realtime endpoint", "unsupported_feature", param)


def _ms(samples: int, rate: int) -> int:
    return int(round(samples * 1000 / rate))


@dataclass
class _Item:
    """One conversation item (a user or assistant message) and the agent turn that holds it."""

    id: str
    role: str  # user | assistant
    kind: str  # input_text | input_audio | output_audio | output_text
    text: str = ""
    audio: np.ndarray | None = None  # user audio at 16 kHz (the agent's TTS context)
    status: str = "completed"
    turn: Turn | None = None  # the conversation turn it became (None while pending)
    audio_samples: int = 0  # assistant audio sent, at 24 kHz
    truncate_ms: int | None = None  # a truncate that came while the reply was still running

    def content(self) -> list[dict[str, Any]]:
        if self.kind == "input_text":
            return [{"type": "input_text", "text": self.text}]
        if self.kind == "input_audio":
            return [{"type": "input_audio", "transcript": self.text or None}]
        if self.kind == "output_text":
            return [{"type": "output_text", "text": self.text}]
        return [{"type": "output_audio", "transcript": self.text}]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "object": "realtime.item", "type": "message", "role": self.role, "status": self.status,
                "content": self.content()}  # fmt: skip


@dataclass
class _Response:
    """One response: from ``response.created`` to ``response.done``."""

    id: str
    modalities: list[str]
    voice: str | None
    metadata: dict[str, str] | None = None
    turn_id: int | None = None  # the LLM stage's turn, once it started
    item: _Item | None = None
    cancel_reason: str | None = None  # turn_detected | client_cancelled
    failed: str | None = None
    output_tokens: int = 0
    spoken: list[str] = field(default_factory=list)
    resampler: StreamResampler | None = None
    restore: dict[str, Any] | None = None  # LLM settings to put back after a per-response override


class RealtimeSession:
    """One Realtime conversation over one :class:`~echoforge.agent.pipeline.VoiceAgent`.

    Args:
        agent: the agent (not started: :meth:`start` starts it).
        send: queues one server event (a JSON-able dict) for the client; called in order, never
            blocks (the transport drains its queue in its own task).
        model: the ``model`` the client asked for (echoed in the session).
        check_voice: ``voice -> None``, raises ``ValueError``/``LookupError`` for a voice the
            server does not have (default: every voice is accepted).
        transcriber: name of the recogniser, shown as ``audio.input.transcription.model``.
    """

    def __init__(self, agent: Any, send: Callable[[dict[str, Any]], None], model: str = "echoforge",
                 check_voice: Callable[[str], Any] | None = None, transcriber: str = "whisper") -> None:  # fmt: skip
        self.agent = agent
        self._send = send
        self.id = new_id("sess")
        self.model = model
        self.check_voice = check_voice
        self.transcriber = transcriber
        s = agent.settings
        turn = s.turn
        self.session: dict[str, Any] = {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": model,
            "output_modalities": ["audio"],
            "instructions": s.persona,
            "max_output_tokens": s.llm_max_tokens,
            "tools": [],
            "tool_choice": "auto",
            "tracing": None,
            "audio": {
                "input": {
                    "format": dict(AUDIO_FORMAT),
                    "transcription": {"model": transcriber},
                    "noise_reduction": None,
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": turn.threshold,
                        "prefix_padding_ms": turn.preroll_ms,
                        "silence_duration_ms": turn.silence_ms,
                        "create_response": True,
                        "interrupt_response": True,
                        "idle_timeout_ms": None,
                    },
                },
                "output": {"format": dict(AUDIO_FORMAT), "voice": agent.voice, "speed": 1.0},
            },
        }
        self.items: dict[str, _Item] = {}
        self.order: list[str] = []  # item ids in conversation order
        self.pending: list[_Item] = []  # user items not answered yet
        self.response: _Response | None = None
        self._buffer = bytearray()  # manual turns: pcm16 24 kHz until commit
        self._input = StreamResampler(PCM_RATE, SAMPLE_RATE)
        self._input_samples = 0  # 16 kHz samples given to the VAD
        self._marks: deque[tuple[str, int]] = deque()  # ("start" | "stop", ms into the input) per VAD decision
        self._vad_offset_ms = 0  # input already heard when the current turn detector was made
        self._turn_model: Callable[[np.ndarray], float] | None = None  # semantic_vad: the smart-turn model
        self._speech_item: _Item | None = None  # the user item the VAD is hearing
        self._injected: set[int] = set()  # ids of the TranscriptionFrames response.create sent in
        self._spoken: dict[int, list[str]] = {}  # turn id -> sentences spoken before the start was seen
        agent.tts.on_text = self._on_sentence
        agent.vad.on_event = self._on_vad
        agent.llm.respond = self._respond_now

    # -- plumbing ----------------------------------------------------------------------------------
    @property
    def server_vad(self) -> bool:
        return self.session["audio"]["input"]["turn_detection"] is not None

    def emit(self, type_: str, **fields: Any) -> None:
        """Queue one server event (in order: the transport sends them as they come)."""
        self._send({"type": type_, "event_id": new_id("event"), **fields})

    def error(self, exc: RealtimeError, event_id: str | None = None) -> None:
        self.emit("error", error={"type": exc.type, "code": exc.code, "message": exc.message, "param": exc.param,
                                        "event_id": event_id})  # fmt: skip

    async def start(self) -> None:
        """Start the agent and greet the client with ``session.created``."""
        await self.agent.start()
        self.emit("session.created", session=self.session)

    async def stop(self) -> None:
        await self.agent.stop()

    async def pump(self) -> None:
        """Forward the agent's frames as server events until cancelled."""
        async for frame in self.agent.events():
            try:
                await self.on_frame(frame)
            except Exception:  # one bad frame must not end the conversation
                log.exception("realtime: could not translate %s", type(frame).__name__)

    # -- client events -----------------------------------------------------------------------------
    async def handle_message(self, raw: str | bytes) -> None:
        """One client message: applied, or answered with an ``error`` event."""
        event_id = None
        try:
            try:
                event = json.loads(raw)
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise RealtimeError("the message is not valid JSON", "invalid_json") from None
            if not isinstance(event, dict):
                raise RealtimeError("a client event must be a JSON object", "invalid_event")
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            kind = event.get("type")
            handler = self._handlers().get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise RealtimeError(f"unknown event type {kind!r}; supported: {', '.join(sorted(self._handlers()))}",
                                    "invalid_event", "type")  # fmt: skip
            await handler(event)
        except RealtimeError as exc:
            self.error(exc, event_id)
        except Exception as exc:  # a bug, not the client's fault: say so, keep the session
            log.exception("realtime: %s failed", type(exc).__name__)
            self.error(
                RealtimeError("the server failed to process the event", "server_error", type="server_error"), event_id
            )

    def _handlers(self) -> dict[str, Callable[[dict], Awaitable[None]]]:
        return {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "conversation.item.retrieve": self._item_retrieve,
            "conversation.item.truncate": self._item_truncate,
            "conversation.item.delete": self._item_delete,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
        }

    async def _session_update(self, event: dict) -> None:
        session = _obj(event.get("session"), "session")
        if session.get("type", "realtime") != "realtime":
            raise _unsupported(f"session type {session.get('type')!r}", "session.type")
        if session.get("tools"):
            raise _unsupported("tools (function calling)", "session.tools")
        new = json.loads(json.dumps(self.session))  # validate everything, then apply at once
        if "instructions" in session:
            new["instructions"] = _text(session["instructions"], "session.instructions")
        if "output_modalities" in session:
            new["output_modalities"] = _modalities(session["output_modalities"], "session.output_modalities")
        if "max_output_tokens" in session:
            new["max_output_tokens"] = _max_tokens(session["max_output_tokens"], "session.max_output_tokens")
        audio = _obj(session.get("audio", {}), "session.audio")
        inp = _obj(audio.get("input", {}), "session.audio.input")
        out = _obj(audio.get("output", {}), "session.audio.output")
        if "format" in inp:
            new["audio"]["input"]["format"] = _format(inp["format"], "session.audio.input.format")
        if inp.get("noise_reduction") is not None:  # accepted for clients that always send it; not applied:
            _obj(inp["noise_reduction"], "session.audio.input.noise_reduction")  # the session says null
        if "transcription" in inp and inp["transcription"] is not None:
            _obj(inp["transcription"], "session.audio.input.transcription")  # always the agent's Whisper
        if "turn_detection" in inp:
            new["audio"]["input"]["turn_detection"] = self._turn_detection(inp["turn_detection"])
        if "format" in out:
            new["audio"]["output"]["format"] = _format(out["format"], "session.audio.output.format")
        if "voice" in out:
            new["audio"]["output"]["voice"] = self._voice(out["voice"], "session.audio.output.voice")
        if "speed" in out:
            new["audio"]["output"]["speed"] = _number(out["speed"], "session.audio.output.speed", 0.25, 1.5)
        if "model" in session and isinstance(session["model"], str):
            new["model"] = session["model"]
        td = new["audio"]["input"]["turn_detection"]
        if td is not None and td["type"] == "semantic_vad" and self._turn_model is None:
            try:  # loaded once, off the event loop
                from echoforge.agent.turn import smart_turn_model

                self._turn_model = await asyncio.to_thread(smart_turn_model)
            except (ImportError, OSError) as exc:
                raise _unsupported(
                    f"semantic_vad without the smart-turn model ({exc})", "session.audio.input.turn_detection"
                ) from None
        self._apply(new)
        self.emit("session.updated", session=self.session)

    def _turn_detection(self, value: Any) -> dict[str, Any] | None:
        param = "session.audio.input.turn_detection"
        if value is None:
            return None
        td = _obj(value, param)
        if td.get("type") not in ("server_vad", "semantic_vad"):
            raise RealtimeError("turn_detection.type must be server_vad or semantic_vad (or turn_detection null)",
                                "invalid_value", f"{param}.type")  # fmt: skip
        if td.get("interrupt_response") is False:
            raise _unsupported("interrupt_response: false", f"{param}.interrupt_response")
        create = td.get("create_response", True)
        if not isinstance(create, bool):
            raise RealtimeError("create_response must be true or false", "invalid_value", f"{param}.create_response")
        if td.get("idle_timeout_ms") is not None:
            raise _unsupported("idle_timeout_ms", f"{param}.idle_timeout_ms")
        if td["type"] == "semantic_vad":
            eagerness = td.get("eagerness") or "auto"
            if eagerness not in EAGERNESS_WAIT_MS:
                raise RealtimeError(
                    "eagerness must be low, medium, high or auto", "invalid_value", f"{param}.eagerness"
                )
            return {
                "type": "semantic_vad",
                "eagerness": eagerness,
                "create_response": create,
                "interrupt_response": True,
            }
        current = self.session["audio"]["input"]["turn_detection"] or {}
        turn = self.agent.settings.turn
        return {
            "type": "server_vad",
            "threshold": _number(td.get("threshold", current.get("threshold", turn.threshold)), f"{param}.threshold", 0.01, 0.99),
            "prefix_padding_ms": int(_number(td.get("prefix_padding_ms", current.get("prefix_padding_ms", turn.preroll_ms)),
                                             f"{param}.prefix_padding_ms", 0, 2000)),
            "silence_duration_ms": int(_number(td.get("silence_duration_ms", current.get("silence_duration_ms", turn.silence_ms)),
                                               f"{param}.silence_duration_ms", 100, 5000)),
            "create_response": create,
            "interrupt_response": True,
            "idle_timeout_ms": None,
        }  # fmt: skip

    def _voice(self, value: Any, param: str) -> str | None:
        if isinstance(value, dict):
            value = value.get("id")
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise RealtimeError("voice must be a voice name or id", "invalid_value", param)
        if self.check_voice is not None:
            try:
                self.check_voice(value)
            except Exception as exc:
                raise RealtimeError(
                    getattr(exc, "message", None) or f"voice {value!r} not found", "voice_not_found", param
                ) from None
        return value.strip()

    def _apply(self, new: dict[str, Any]) -> None:
        """Make the agent follow the session: persona, token budget, voice, speed, turn detection."""
        old_td = self.session["audio"]["input"]["turn_detection"]
        self.session = new
        agent = self.agent
        agent.llm.settings = agent.llm.settings.model_copy(
            update={"persona": new["instructions"], "llm_max_tokens": _budget(new["max_output_tokens"], agent.settings)}
        )
        agent.set_voice(new["audio"]["output"]["voice"])
        agent.tts.speed = float(new["audio"]["output"]["speed"])
        agent.tts.speak = "audio" in new["output_modalities"]
        td = new["audio"]["input"]["turn_detection"]
        if td != old_td:
            self._buffer.clear()
            self._speech_item = None
            self._input = StreamResampler(PCM_RATE, SAMPLE_RATE)
            agent.vad.paused = td is None  # manual turns: the VAD hears nothing, commit ends the turn
            if td is not None:
                self._set_vad(td)

    def _set_vad(self, td: dict[str, Any]) -> None:
        """A fresh turn detector with the client's threshold, padding and silence (same VAD model)."""
        s = self.agent.settings
        old: TurnDetector = self.agent.vad.detector
        params = VADParams(**{**old.params.__dict__})
        turn_model = None
        if td["type"] == "semantic_vad":
            # The agent's semantic end of turn: the smart-turn model judges each pause; eagerness is
            # how long a pause it judged unfinished may last.
            params.smart_turn = True
            params.incomplete_silence_ms = EAGERNESS_WAIT_MS[td["eagerness"]]
            turn_model = old.turn_model or self._turn_model
        else:
            params.smart_turn = False
            params.threshold = float(td["threshold"])
            params.interrupt_threshold = max(params.interrupt_threshold, params.threshold)
            params.preroll_ms = int(td["prefix_padding_ms"])
            params.silence_ms = int(td["silence_duration_ms"])
        params.partial_ms = s.stt_partial_ms if s.stt_partial_ms < params.silence_ms else 0
        detector = TurnDetector(params, old.vad, turn_model)
        detector.bot_speaking = old.bot_speaking
        self.agent.vad.detector = detector
        self.agent.output.detector = detector
        self._vad_offset_ms = _ms(self._input_samples, SAMPLE_RATE)  # its clock starts at 0 here

    async def _append(self, event: dict) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise RealtimeError("'audio' must be base64-encoded PCM", "invalid_value", "audio")
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError("'audio' is not valid base64", "invalid_value", "audio") from None
        if len(pcm) % 2:
            raise RealtimeError(
                "'audio' must hold whole 16-bit samples (an even number of bytes)", "invalid_value", "audio"
            )
        if not self.server_vad:
            if len(self._buffer) + len(pcm) > MAX_BUFFER_S * PCM_RATE * 2:
                raise RealtimeError(
                    f"the input audio buffer holds at most {MAX_BUFFER_S} s", "input_audio_buffer_full", "audio"
                )
            self._buffer += pcm
            return
        chunk = self._input.process(pcm16_to_float(pcm))
        if not chunk.size:
            return
        self._input_samples += chunk.size
        await self.agent.push_audio(chunk, SAMPLE_RATE)

    @property
    def auto_respond(self) -> bool:
        """Whether the end of a spoken turn starts a response (server VAD with ``create_response``)."""
        td = self.session["audio"]["input"]["turn_detection"]
        return td is not None and td["create_response"]

    def _respond_now(self, frame: TranscriptionFrame) -> bool:
        """LLM stage gate: our response.create's turns always; the VAD's when create_response is on."""
        return frame.id in self._injected or self.auto_respond

    def _on_vad(self, event: VADEvent) -> None:
        """VAD hook (before the event's frames go out): where in the input speech started / ended."""
        detector = self.agent.vad.detector
        if event.kind == "started":  # confirmed after min_speech_ms (interrupt_min_speech_ms over the agent)
            p = detector.params
            needed = p.interrupt_min_speech_ms if event.during_bot_speech else p.min_speech_ms
            self._marks.append(("start", self._vad_offset_ms + max(0, int(event.time_s * 1000) - needed)))
        elif event.kind == "stopped":
            end_s = (
                event.speech_end_s
                if event.speech_end_s is not None
                else event.time_s - detector.params.silence_ms / 1000
            )
            self._marks.append(("stop", self._vad_offset_ms + int(end_s * 1000)))

    def _mark(self, kind: str) -> int:
        """The input position (ms) of the VAD's next ``kind`` decision."""
        while self._marks:
            mark, ms = self._marks.popleft()
            if mark == kind:
                return ms
        return _ms(self._input_samples, SAMPLE_RATE)

    async def _commit(self, event: dict) -> None:
        if self.server_vad:
            raise RealtimeError("with server_vad the server commits each turn when the user stops speaking; "
                                "set audio.input.turn_detection to null to commit by hand", "invalid_value", "type")  # fmt: skip
        pcm, self._buffer = bytes(self._buffer), bytearray()
        if _ms(len(pcm) // 2, PCM_RATE) < MIN_COMMIT_MS:
            raise RealtimeError(f"buffer too small: at least {MIN_COMMIT_MS} ms of audio is needed to commit, "
                                f"the buffer holds {_ms(len(pcm) // 2, PCM_RATE)} ms", "input_audio_buffer_commit_empty")  # fmt: skip
        from echoforge.audio import resample

        audio = resample(pcm16_to_float(pcm), PCM_RATE, SAMPLE_RATE)
        item = self._add_item(_Item(new_id("item"), "user", "input_audio", audio=audio))
        self.emit("input_audio_buffer.committed", item_id=item.id, previous_item_id=self._previous(item))
        await self._user_audio_item(item)

    async def _user_audio_item(self, item: _Item) -> None:
        """Announce a user audio item, transcribe it with the agent's recogniser, finish it."""
        self.emit("conversation.item.added", item=item.as_dict(), previous_item_id=self._previous(item))
        assert item.audio is not None
        transcript = await asyncio.to_thread(self.agent.stt.stt.transcribe, item.audio, SAMPLE_RATE)
        item.text = transcript.text.strip()
        await self._transcribed(item)
        self.pending.append(item)

    async def _transcribed(self, item: _Item) -> None:
        seconds = round(item.audio.size / SAMPLE_RATE, 3) if item.audio is not None else 0.0
        self.emit("conversation.item.input_audio_transcription.completed", item_id=item.id, content_index=0,
                        transcript=item.text, usage={"type": "duration", "seconds": seconds})  # fmt: skip
        self.emit("conversation.item.done", item=item.as_dict(), previous_item_id=self._previous(item))

    async def _clear(self, event: dict) -> None:
        self._buffer.clear()
        if self.server_vad:  # drop the turn the VAD is hearing
            self.agent.vad.detector.reset()
            self._input = StreamResampler(PCM_RATE, SAMPLE_RATE)
            self._speech_item = None
        self.emit("input_audio_buffer.cleared")

    async def _item_create(self, event: dict) -> None:
        item = _obj(event.get("item"), "item")
        if item.get("type", "message") != "message":
            raise _unsupported(f"items of type {item.get('type')!r} (function calls, MCP)", "item.type")
        role = item.get("role")
        content = item.get("content")
        if role not in ("user", "assistant", "system"):
            raise RealtimeError("item.role must be user, assistant or system", "invalid_value", "item.role")
        if role == "system":
            raise _unsupported("system message items (set session.instructions instead)", "item.role")
        if not isinstance(content, list) or not content or not all(isinstance(c, dict) for c in content):
            raise RealtimeError(
                "item.content must be a non-empty list of content parts", "invalid_value", "item.content"
            )
        texts, audio = [], []
        for i, part in enumerate(content):
            kind = part.get("type")
            if role == "user" and kind == "input_text" or role == "assistant" and kind in ("output_text", "text"):
                texts.append(_text(part.get("text"), f"item.content[{i}].text"))
            elif role == "user" and kind == "input_audio":
                try:
                    pcm = base64.b64decode(part.get("audio") or "", validate=True)
                except (binascii.Error, ValueError, TypeError):
                    raise RealtimeError(
                        "input_audio must be base64 PCM", "invalid_value", f"item.content[{i}].audio"
                    ) from None
                if len(pcm) < 2:
                    raise RealtimeError("input_audio holds no audio", "invalid_value", f"item.content[{i}].audio")
                audio.append(pcm16_to_float(pcm[: len(pcm) // 2 * 2]))
            else:
                raise _unsupported(f"content parts of type {kind!r} in a {role} message", f"item.content[{i}].type")
        if role == "assistant":
            new = self._add_item(_Item(_item_id(item), "assistant", "output_text", " ".join(texts)))
            new.turn = Turn("assistant", new.text)
            self.agent.conversation.add(new.turn)
            self.emit("conversation.item.added", item=new.as_dict(), previous_item_id=self._previous(new))
            self.emit("conversation.item.done", item=new.as_dict(), previous_item_id=self._previous(new))
            return
        if audio:
            from echoforge.audio import resample

            samples = resample(np.concatenate(audio), PCM_RATE, SAMPLE_RATE)
            new = self._add_item(_Item(_item_id(item), "user", "input_audio", audio=samples))
            await self._user_audio_item(new)
            if texts:
                new.text = " ".join([*texts, new.text]).strip()
            return
        new = self._add_item(_Item(_item_id(item), "user", "input_text", " ".join(texts)))
        self.emit("conversation.item.added", item=new.as_dict(), previous_item_id=self._previous(new))
        self.emit("conversation.item.done", item=new.as_dict(), previous_item_id=self._previous(new))
        self.pending.append(new)

    async def _item_retrieve(self, event: dict) -> None:
        item = self._find(event.get("item_id"))
        self.emit("conversation.item.retrieved", item=item.as_dict())

    async def _item_truncate(self, event: dict) -> None:
        item = self._find(event.get("item_id"))
        if item.role != "assistant":
            raise RealtimeError("only assistant message items can be truncated", "invalid_value", "item_id")
        end_ms = event.get("audio_end_ms")
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            raise RealtimeError("audio_end_ms must be a non-negative integer", "invalid_value", "audio_end_ms")
        if end_ms > _ms(item.audio_samples, PCM_RATE) and item.status != "in_progress":
            raise RealtimeError(f"audio_end_ms ({end_ms}) is longer than the item's audio "
                                f"({_ms(item.audio_samples, PCM_RATE)} ms)", "invalid_value", "audio_end_ms")  # fmt: skip
        if item.status == "in_progress":  # the reply is still running: cut it when it ends
            item.truncate_ms = end_ms
        else:
            self._truncate(item, end_ms)
        self.emit("conversation.item.truncated", item_id=item.id, content_index=int(event.get("content_index") or 0),
                        audio_end_ms=end_ms)  # fmt: skip

    def _truncate(self, item: _Item, end_ms: int) -> None:
        """Keep the share of the item's words that matches the share of its audio that was played."""
        total = item.audio_samples
        played = min(total, end_ms * PCM_RATE // 1000)
        words = item.text.split()
        keep = len(words) if total == 0 or played >= total else int(len(words) * played / total)
        item.text = " ".join(words[:keep])
        item.audio_samples = played
        if item.turn is not None:
            turn = item.turn
            turn.text = item.text
            turn.interrupted = turn.interrupted or played < total
            if turn.audio is not None and total:
                turn.audio = turn.audio[: int(turn.audio.size * played / total)]

    async def _item_delete(self, event: dict) -> None:
        item = self._find(event.get("item_id"))
        if self.response is not None and self.response.item is item:
            raise RealtimeError("the item is being generated; cancel the response first", "invalid_value", "item_id")
        del self.items[item.id]
        self.order.remove(item.id)
        if item in self.pending:
            self.pending.remove(item)
        turn = item.turn
        if turn is not None and not any(other.turn is turn for other in self.items.values()):
            with contextlib.suppress(ValueError):
                self.agent.conversation.turns.remove(turn)
        self.emit("conversation.item.deleted", item_id=item.id)

    async def _response_create(self, event: dict) -> None:
        if self.response is not None:
            raise RealtimeError(f"conversation already has an active response in progress: {self.response.id}",
                                "conversation_already_has_active_response")  # fmt: skip
        params = _obj(event.get("response", {}) or {}, "response")
        if params.get("tools"):
            raise _unsupported("tools (function calling)", "response.tools")
        if params.get("conversation") not in (None, "auto"):
            raise _unsupported("out-of-band responses (conversation: none)", "response.conversation")
        if params.get("input") is not None:
            raise _unsupported("response.input (custom context)", "response.input")
        modalities = _modalities(
            params.get("output_modalities", self.session["output_modalities"]), "response.output_modalities"
        )
        voice = self.session["audio"]["output"]["voice"]
        out = _obj(
            _obj(params.get("audio", {}) or {}, "response.audio").get("output", {}) or {}, "response.audio.output"
        )
        if "voice" in out:
            voice = self._voice(out["voice"], "response.audio.output.voice")
        instructions = (
            _text(params["instructions"], "response.instructions") if params.get("instructions") is not None else None
        )
        budget = (
            _max_tokens(params["max_output_tokens"], "response.max_output_tokens")
            if "max_output_tokens" in params
            else None
        )
        metadata = params.get("metadata") if isinstance(params.get("metadata"), dict) else None
        pending = [i for i in self.pending if i.text.strip()]
        response = _Response(new_id("resp"), modalities, voice, metadata)
        if not pending:
            # Nothing new was said (clients such as pipecat's ask for a response when they start):
            # the agent only answers the user, so this response ends at once, empty.
            self.emit("response.created", response=self._response_dict(response, "in_progress"))
            self.emit("response.done", response=self._response_dict(response, "completed"))
            return
        # Per-response overrides hold until response.done.
        llm = self.agent.llm
        response.restore = {"settings": llm.settings, "voice": self.agent.voice, "speak": self.agent.tts.speak}
        update: dict[str, Any] = {}
        if instructions is not None:
            update["persona"] = instructions
        if budget is not None:
            update["llm_max_tokens"] = _budget(budget, self.agent.settings)
        if update:
            llm.settings = llm.settings.model_copy(update=update)
        self.agent.set_voice(voice)
        self.agent.tts.speak = "audio" in modalities
        self.response = response
        self.emit("response.created", response=self._response_dict(response, "in_progress"))
        text = " ".join(i.text.strip() for i in pending)
        audio = [i.audio for i in pending if i.audio is not None]
        frame = TranscriptionFrame(text=text, audio=np.concatenate(audio) if audio else None, sample_rate=SAMPLE_RATE,
                                   vad_end=time.monotonic())  # fmt: skip
        self._injected.add(frame.id)
        await self.agent.pipeline.queue_frame(frame)

    async def _response_cancel(self, event: dict) -> None:
        response = self.response
        wanted = event.get("response_id")
        if response is None or (wanted and wanted != response.id):
            raise RealtimeError("there is no active response to cancel" if response is None else
                                f"response {wanted!r} is not the active response", "response_cancel_not_active")  # fmt: skip
        response.cancel_reason = response.cancel_reason or "client_cancelled"
        await self.agent.interrupt("client_cancelled")

    # -- agent frames --------------------------------------------------------------------------------
    async def on_frame(self, frame: Frame) -> None:
        """One frame out of the agent → the Realtime events it means."""
        response = self.response
        if isinstance(frame, UserStartedSpeakingFrame):
            item = self._speech_item = _Item(new_id("item"), "user", "input_audio", status="in_progress")
            start = self._mark("start")
            self.emit("input_audio_buffer.speech_started", audio_start_ms=start, item_id=item.id)
            if response is not None:  # barge-in: the interruption right behind this frame cancels the reply
                response.cancel_reason = response.cancel_reason or "turn_detected"
        elif isinstance(frame, UserStoppedSpeakingFrame):
            item = self._speech_item or _Item(new_id("item"), "user", "input_audio")
            self._speech_item = item
            self.emit("input_audio_buffer.speech_stopped", audio_end_ms=self._mark("stop"), item_id=item.id)
            self._add_item(item)
            self.emit("input_audio_buffer.committed", item_id=item.id, previous_item_id=self._previous(item))
            self.emit("conversation.item.added", item=item.as_dict(), previous_item_id=self._previous(item))
        elif isinstance(frame, TranscriptionFrame):
            await self._on_transcription(frame)
        elif isinstance(frame, InterruptionFrame):
            if response is not None and response.turn_id is None:  # cut before the LLM stage started it
                response.cancel_reason = response.cancel_reason or "client_cancelled"
                await self._finish(response)
        elif response is None:
            if isinstance(frame, ErrorFrame):
                self.error(RealtimeError(frame.error, "server_error", type="server_error"))
            return
        elif isinstance(frame, LLMFullResponseStartFrame):
            await self._on_start(response, frame)
        elif isinstance(frame, LLMTextFrame) and frame.turn_id == response.turn_id:
            response.output_tokens += 1
        elif isinstance(frame, OutputAudioRawFrame) and response.item is not None:
            await self._on_audio(response, frame)
        elif isinstance(frame, AssistantTurnFrame):
            await self._on_reply(response, frame)
        elif isinstance(frame, ErrorFrame):
            response.failed = frame.error
            self.error(RealtimeError(frame.error, "server_error", type="server_error"))
            await self.agent.interrupt("error")
            if response.turn_id is None:
                await self._finish(response)

    async def _on_transcription(self, frame: TranscriptionFrame) -> None:
        if frame.id in self._injected:  # our own response.create on its way to the LLM stage
            self._injected.discard(frame.id)
            return
        item = self._speech_item
        self._speech_item = None
        if item is None:
            return
        item.text = frame.text.strip()
        item.audio = frame.audio
        item.status = "completed"
        await self._transcribed(item)
        if not item.text:
            return  # nothing recognised: the agent does not answer, neither do we
        if self.response is None and self.auto_respond:  # the agent answers the spoken turn
            response = _Response(new_id("resp"), list(self.session["output_modalities"]), self.agent.voice)
            self.response = response
            self.emit("response.created", response=self._response_dict(response, "in_progress"))
        self.pending.append(item)

    async def _on_start(self, response: _Response, frame: LLMFullResponseStartFrame) -> None:
        response.turn_id = frame.turn_id
        turns = self.agent.conversation.turns
        user = next((t for t in reversed(turns) if t.role == "user"), None)
        for item in self.pending:
            item.turn = user
            item.audio = None  # the turn holds it now (the TTS context)
        self.pending = []
        kind = "output_audio" if "audio" in response.modalities else "output_text"
        item = self._add_item(_Item(new_id("item"), "assistant", kind, status="in_progress"))
        response.item = item
        if kind == "output_audio" and self.agent.engine.sample_rate != PCM_RATE:
            response.resampler = StreamResampler(self.agent.engine.sample_rate, PCM_RATE)
        where = {"response_id": response.id, "output_index": 0}
        self.emit("response.output_item.added", item=item.as_dict(), **where)
        self.emit("conversation.item.added", item=item.as_dict(), previous_item_id=self._previous(item))
        part = {"type": "audio", "transcript": ""} if kind == "output_audio" else {"type": "text", "text": ""}
        self.emit("response.content_part.added", item_id=item.id, content_index=0, part=part, **where)
        for text in self._spoken.pop(frame.turn_id, []):
            self._on_text(response, text)

    def _on_sentence(self, frame: TTSTextFrame) -> None:
        """TTS hook (the TTS stage's task): a sentence is about to be spoken."""
        response = self.response
        if response is not None and response.turn_id == frame.turn_id and response.item is not None:
            self._on_text(response, frame.text)
        else:
            self._spoken.setdefault(frame.turn_id, []).append(frame.text)

    def _on_text(self, response: _Response, text: str) -> None:
        if response.item is None or self.response is not response:
            return
        delta = (" " if response.spoken else "") + text
        response.spoken.append(text)
        item = response.item
        kind = "response.output_audio_transcript.delta" if item.kind == "output_audio" else "response.output_text.delta"
        self.emit(kind, response_id=response.id, item_id=item.id, output_index=0, content_index=0, delta=delta)

    async def _on_audio(self, response: _Response, frame: OutputAudioRawFrame) -> None:
        audio = frame.audio if response.resampler is None else response.resampler.process(frame.audio)
        self._send_audio(response, audio)

    def _send_audio(self, response: _Response, audio: np.ndarray) -> None:
        if not audio.size or response.item is None:
            return
        response.item.audio_samples += audio.size
        self.emit("response.output_audio.delta", response_id=response.id, item_id=response.item.id, output_index=0,
                        content_index=0, delta=base64.b64encode(float_to_pcm16(audio)).decode("ascii"))  # fmt: skip

    async def _on_reply(self, response: _Response, frame: AssistantTurnFrame) -> None:
        item = response.item
        if item is None:
            return
        if response.resampler is not None and not frame.interrupted:
            self._send_audio(response, response.resampler.flush())
        item.text = frame.text
        item.status = "incomplete" if frame.interrupted else "completed"
        if frame.text or frame.interrupted:  # the output stage committed this turn to the history
            turns = reversed(self.agent.conversation.turns)
            item.turn = next((t for t in turns if t.role == "assistant" and t.text == frame.text), None)
        if frame.interrupted and response.cancel_reason is None:
            response.cancel_reason = "client_cancelled"
        if item.truncate_ms is not None:
            self._truncate(item, item.truncate_ms)
        await self._finish(response)

    async def _finish(self, response: _Response) -> None:
        """The closing events of a response, then ``response.done``; per-response overrides end."""
        item = response.item
        if item is not None:
            where = {"response_id": response.id, "item_id": item.id, "output_index": 0, "content_index": 0}
            if item.kind == "output_audio":
                self.emit("response.output_audio.done", **where)
                self.emit("response.output_audio_transcript.done", transcript=item.text, **where)
                part = {"type": "audio", "transcript": item.text}
            else:
                self.emit("response.output_text.done", text=item.text, **where)
                part = {"type": "text", "text": item.text}
            self.emit("response.content_part.done", part=part, **where)
            self.emit("response.output_item.done", item=item.as_dict(), response_id=response.id, output_index=0)
            self.emit("conversation.item.done", item=item.as_dict(), previous_item_id=self._previous(item))
        if response.restore is not None:
            self.agent.llm.settings = response.restore["settings"]
            self.agent.set_voice(response.restore["voice"])
            self.agent.tts.speak = response.restore["speak"]
        self._spoken.clear()
        self.response = None
        status = "failed" if response.failed else "cancelled" if response.cancel_reason else "completed"
        self.emit("response.done", response=self._response_dict(response, status))

    def _response_dict(self, response: _Response, status: str) -> dict[str, Any]:
        details: dict[str, Any] | None = None
        if status == "cancelled":
            details = {"type": "cancelled", "reason": response.cancel_reason}
        elif status == "failed":
            details = {
                "type": "failed",
                "error": {"type": "server_error", "code": "agent_error", "message": response.failed},
            }
        done = status != "in_progress"
        tokens = response.output_tokens
        return {
            "id": response.id,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "conversation_id": self.id,
            "output_modalities": response.modalities,
            "max_output_tokens": self.agent.llm.settings.llm_max_tokens,
            "audio": {"output": {"format": dict(AUDIO_FORMAT), "voice": response.voice}},
            "metadata": response.metadata,
            "output": [response.item.as_dict()] if done and response.item is not None else [],
            # The LLM's streamed pieces (≈ tokens); prompt tokens and audio tokens are not counted.
            "usage": {"output_tokens": tokens, "total_tokens": tokens,
                      "output_token_details": {"text_tokens": tokens, "audio_tokens": 0}} if done else None,
        }  # fmt: skip

    # -- items ---------------------------------------------------------------------------------------
    def _add_item(self, item: _Item) -> _Item:
        if item.id in self.items:
            raise RealtimeError(f"an item with id {item.id!r} already exists", "item_already_exists", "item.id")
        self.items[item.id] = item
        self.order.append(item.id)
        return item

    def _previous(self, item: _Item) -> str | None:
        i = self.order.index(item.id) if item.id in self.order else len(self.order)
        return self.order[i - 1] if i > 0 else None

    def _find(self, item_id: Any) -> _Item:
        if not isinstance(item_id, str) or item_id not in self.items:
            raise RealtimeError(f"item {item_id!r} does not exist in the conversation", "item_not_found", "item_id")
        return self.items[item_id]


# --- validation helpers -------------------------------------------------------------------------------


def _obj(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RealtimeError(f"{param} must be an object", "invalid_value", param)
    return value


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise RealtimeError(f"{param} must be a string", "invalid_value", param)
    if len(value) > MAX_TEXT_CHARS:  # every character goes into the LLM's prompt
        raise RealtimeError(f"{param} is longer than {MAX_TEXT_CHARS} characters", "string_above_max_length", param)
    return value


def _number(value: Any, param: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise RealtimeError(f"{param} must be a number between {lo:g} and {hi:g}", "invalid_value", param)
    return value


def _modalities(value: Any, param: str) -> list[str]:
    if value not in (["audio"], ["text"]):
        raise RealtimeError(f'{param} must be ["audio"] or ["text"]', "invalid_value", param)
    return list(value)


def _format(value: Any, param: str) -> dict[str, Any]:
    fmt = _obj(value, param)
    if fmt.get("type", "audio/pcm") != "audio/pcm" or fmt.get("rate", PCM_RATE) != PCM_RATE:
        raise _unsupported(f"audio format {fmt} (only audio/pcm at 24000 Hz)", param)
    return dict(AUDIO_FORMAT)


def _max_tokens(value: Any, param: str) -> int | str:
    if value == "inf":
        return "inf"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise RealtimeError(f'{param} must be an integer from 1 to 4096, or "inf"', "invalid_value", param)
    return value


def _budget(value: int | str, settings: Any) -> int:
    """``max_output_tokens`` as the LLM stage's budget (``inf``: the configured one)."""
    return settings.llm_max_tokens if value == "inf" else int(value)


def _item_id(item: dict[str, Any]) -> str:
    given = item.get("id")
    return given if isinstance(given, str) and given else new_id("item")
