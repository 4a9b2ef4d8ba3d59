"""A Wyoming TTS server (Home Assistant's Assist) on top of EchoForge's synthesis service.

Protocol (the ``wyoming`` package; see its ``tts`` module):

* ``describe`` → ``info``: one TTS program, ``echoforge``, whose voices are the
  :class:`~echoforge.server.services.voices.VoiceStore` voices with their languages; the
  descriptions name the engine and say when it is a fallback (Piper/espeak-ng, not CSM).
* ``synthesize`` (voice by name, or by language; Home Assistant's ``speaker`` option names
  another EchoForge voice, or a CSM speaker id) → ``audio-start``, ``audio-chunk`` … as the
  engine produces them, ``audio-stop``. Any text within ``server.max_text_chars`` is spoken in
  full: the engine splits it at sentences and generates piece after piece (CSM continues each
  piece from the previous one), streamed as it goes.
* Streaming (``synthesize-start``, ``synthesize-chunk`` …, ``synthesize-stop``): every sentence
  is spoken as soon as it is complete — its own ``audio-start``/``audio-chunk``/``audio-stop`` —
  so Home Assistant speaks while its LLM still writes; ``synthesize-stopped`` ends the stream.
  The ``synthesize`` that clients send inside a stream, for servers without streaming, is
  ignored there.
* Problems with a plain ``synthesize`` (unknown voice, empty or too long text, busy engine)
  are answered with an ``error`` event **and the connection is closed**, as wyoming-piper does:
  Home Assistant's non-streaming reader ignores ``error`` and would otherwise wait forever.
  Inside a stream, a refused sentence is an ``error`` and the stream goes on (``synthesize-stop``
  is still answered with ``synthesize-stopped``). A client that disconnects mid-answer is
  logged at debug level, never as an unretrieved task exception.

The engine, voices and :class:`~echoforge.server.services.synthesis.SynthesisService` live in
one :class:`WyomingTTS` shared by all connections; :class:`EchoForgeEventHandler` is one
connection. Requests are built by ``SynthesisService.build_request`` (voice resolution, tone
modifiers such as ``(gently) …``), audio comes from ``SynthesisService.stream`` (engine in worker
threads) and is converted by :func:`echoforge.audio.float_to_pcm16`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncEventHandler, AsyncServer
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped, SynthesizeVoice

from echoforge import __version__
from echoforge.audio import float_to_pcm16
from echoforge.engines.base import EngineBusy
from echoforge.integrations import ToneCarry
from echoforge.server.errors import ApiError, NotFound
from echoforge.server.services.speech_session import sentences, split_complete
from echoforge.text import audio_budget_ms

if TYPE_CHECKING:
    from echoforge.engines.base import SynthesisRequest
    from echoforge.server.services.synthesis import SynthesisService
    from echoforge.server.services.voices import Voice

log = logging.getLogger("echoforge.wyoming")

SAMPLE_WIDTH = 2  # bytes: PCM s16le, what float_to_pcm16 writes
CHANNELS = 1
# Who made the speech: CSM-1B, or the fallback engine that stands in for it.
_ATTRIBUTIONS = {
    "piper": Attribution(name="Piper (EchoForge fallback)", url="https://github.com/OHF-Voice/piper1-gpl"),
    "espeak": Attribution(name="eSpeak NG (EchoForge fallback)", url="https://github.com/espeak-ng/espeak-ng"),
}
_CSM_ATTRIBUTION = Attribution(name="Sesame CSM-1B via EchoForge", url="https://huggingface.co/sesame/csm-1b")


def _norm_language(tag: str) -> str:
    return tag.strip().replace("_", "-").lower()


class WyomingTTS:
    """What every connection shares: the synthesis service and the server's defaults."""

    def __init__(
        self, synthesis: SynthesisService, *, default_voice: str = "alloy", samples_per_chunk: int = 1024
    ) -> None:
        """Wrap a ready synthesis service.

        Args:
            synthesis: the service that owns the engine and the voice store.
            default_voice: voice for requests that name none (id, name or OpenAI alias).
            samples_per_chunk: largest ``audio-chunk`` in samples; engine chunks are split to it.
        """
        self.synthesis = synthesis
        self.default_voice = synthesis.voices.get(default_voice).id  # fail at start-up, not per request
        self.samples_per_chunk = max(64, int(samples_per_chunk))

    @property
    def sample_rate(self) -> int:
        return self.synthesis.engine.sample_rate

    def engine_label(self) -> str:
        engine = self.synthesis.engine
        return f"{engine.name} (fallback engine, not CSM)" if engine.is_fallback else engine.name

    def info(self) -> Info:
        """The ``info`` answer: one program, one Wyoming voice per EchoForge voice."""
        label = self.engine_label()
        attribution = _ATTRIBUTIONS.get(self.synthesis.engine.name, _CSM_ATTRIBUTION)
        voices = [
            TtsVoice(
                name=v.id,
                attribution=attribution,
                installed=True,
                description=f"{v.name} — {v.description or v.tags.get('style', '')} [engine: {label}]".strip(),
                version=__version__,
                languages=[v.tags.get("language") or "en-US"],
            )
            for v in self.synthesis.voices.list()
        ]
        program = TtsProgram(
            name="echoforge",
            attribution=attribution,
            installed=True,
            description=f"EchoForge conversational TTS — engine: {label}",
            version=__version__,
            voices=voices,
            supports_synthesize_streaming=True,
        )
        return Info(tts=[program])

    def resolve_voice(self, requested: SynthesizeVoice | None) -> str:
        """A Wyoming voice request → an EchoForge voice id.

        Args:
            requested: ``speaker`` naming an EchoForge voice (id, name or alias) wins; then
                ``name`` (id, name or OpenAI alias, as everywhere in EchoForge); otherwise
                ``language`` picks the first voice of that language (``en`` matches ``en-US``);
                otherwise the default voice.

        Returns:
            The voice id.

        Raises:
            NotFound: no such voice, or no voice for the language.
        """
        if requested is None or (not requested.name and not requested.language and not requested.speaker):
            return self.default_voice
        speaker = (requested.speaker or "").strip()
        if speaker and not speaker.isdigit():
            return self.synthesis.voices.get(speaker).id
        if requested.name:
            return self.synthesis.voices.get(requested.name).id
        if not requested.language:
            return self.default_voice
        want = _norm_language(requested.language or "")
        voices: list[Voice] = self.synthesis.voices.list()
        for exact in (True, False):
            for v in voices:
                have = _norm_language(v.tags.get("language") or "en-US")
                if have == want or (not exact and have.split("-")[0] == want.split("-")[0]):
                    return v.id
        raise NotFound(f"no voice for language {requested.language!r}", param="voice", code="voice_not_found")

    async def prepare(
        self, text: str, voice: str, *, tone: str | None = None, speaker: int | None = None
    ) -> SynthesisRequest:
        """Build the engine request (voice applied, tone modifiers parsed off) in a worker thread.

        Args:
            text: what to say; a leading ``(tone)`` modifier is parsed off by ``build_request``.
                Long text is one request: the engine splits it at sentences and speaks it all
                (the audio cap follows from the text, :func:`echoforge.text.audio_budget_ms`).
            voice: an EchoForge voice id.
            tone: the utterance's tone when ``text`` carries no modifier of its own.
            speaker: a CSM speaker id instead of the voice's own (Home Assistant's ``speaker``).

        Raises:
            ApiError: empty or over-long text, unknown voice (as the HTTP API would answer).
        """
        synthesis = self.synthesis
        text = synthesis.check_text(text, "text")
        budget = audio_budget_ms(text, floor_ms=synthesis.settings.generation.max_audio_length_ms)
        request = await asyncio.to_thread(
            synthesis.build_request, text=text, voice=voice, instructions=tone, max_audio_length_ms=budget
        )
        if speaker is not None:
            request = dataclasses.replace(request, speaker=speaker)
        return request

    async def audio(self, request: SynthesisRequest) -> AsyncIterator[bytes]:
        """PCM s16le mono at :attr:`sample_rate`, in pieces as the engine produces them."""
        step = self.samples_per_chunk * SAMPLE_WIDTH
        async with contextlib.aclosing(self.synthesis.stream(request)) as chunks:
            async for chunk in chunks:
                pcm = float_to_pcm16(chunk)
                for i in range(0, len(pcm), step):
                    yield pcm[i : i + step]


@dataclass
class _TextStream:
    """One ``synthesize-start`` … ``synthesize-stop`` stream on a connection."""

    voice: str | None  # None: the voice was refused at synthesize-start (error already sent)
    buffer: str = ""
    tone: ToneCarry = field(default_factory=ToneCarry)
    speaker: int | None = None


def _speaker_id(voice: SynthesizeVoice | None) -> int | None:
    """Home Assistant's ``speaker`` option as a CSM speaker id, when it is a number."""
    speaker = (voice.speaker or "").strip() if voice is not None else ""
    return int(speaker) if speaker.isdigit() else None


class EchoForgeEventHandler(AsyncEventHandler):
    """One Wyoming connection."""

    def __init__(self, tts: WyomingTTS, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.tts = tts
        self.stream: _TextStream | None = None

    async def run(self) -> None:
        """The connection's event loop; a client that goes away is not an error."""
        try:
            await super().run()
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("wyoming client disconnected: %s", exc or type(exc).__name__)
        except (ValueError, UnicodeDecodeError) as exc:  # not a Wyoming client (bad header/JSON)
            log.info("wyoming connection closed: malformed event (%s)", exc)

    async def handle_event(self, event: Event) -> bool:
        """Answer one event. A refused or failed plain ``synthesize`` is ``error`` + close (as
        wyoming-piper); inside a stream, errors are ``error`` events and the stream goes on."""
        if Describe.is_type(event.type):
            await self.write_event(self.tts.info().event())
            return True
        plain = False
        try:
            if SynthesizeStart.is_type(event.type):
                start = SynthesizeStart.from_event(event)
                self.stream = _TextStream(voice=None)
                self.stream.voice = self.tts.resolve_voice(start.voice)
                self.stream.speaker = _speaker_id(start.voice)
            elif SynthesizeChunk.is_type(event.type):
                await self._stream_chunk(SynthesizeChunk.from_event(event).text)
            elif SynthesizeStop.is_type(event.type):
                await self._stream_stop()
            elif Synthesize.is_type(event.type):
                if self.stream is not None:
                    return True  # the stream's text again, for servers without streaming
                plain = True
                synthesize = Synthesize.from_event(event)
                voice = self.tts.resolve_voice(synthesize.voice)
                await self._say(" ".join(synthesize.text.split()), voice, speaker=_speaker_id(synthesize.voice))
        except ApiError as exc:  # unknown voice, empty text, 503 busy …
            await self._error(exc.message, exc.code or type(exc).__name__)
            return not plain
        except EngineBusy as exc:
            await self._error(str(exc), "server_overloaded")
            return not plain
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:  # the engine failed: report it (and close, for a plain synthesize)
            log.warning("wyoming synthesis failed: %s", exc, exc_info=not isinstance(exc, (ValueError, RuntimeError)))
            await self._error(f"synthesis failed: {exc}", "engine_error")
            return not plain
        return True

    async def _error(self, text: str, code: str) -> None:
        log.info("wyoming error %s: %s", code, text)
        with contextlib.suppress(ConnectionError):
            await self.write_event(Error(text=text, code=code).event())

    async def _stream_chunk(self, text: str) -> None:
        stream = self.stream
        if stream is None:
            raise ApiError("synthesize-chunk outside a stream: send synthesize-start first", code="bad_stream")
        if stream.voice is None:
            return
        stream.buffer += text
        ready, stream.buffer = split_complete(stream.buffer)
        for sentence in ready:
            await self._say(sentence, stream.voice, stream.tone.see(sentence), speaker=stream.speaker)

    async def _stream_stop(self) -> None:
        stream, self.stream = self.stream, None
        if stream is None:
            raise ApiError("synthesize-stop outside a stream: send synthesize-start first", code="bad_stream")
        try:
            if stream.voice is not None:
                for sentence in sentences(stream.buffer):
                    await self._say(sentence, stream.voice, stream.tone.see(sentence), speaker=stream.speaker)
        finally:
            await self.write_event(SynthesizeStopped().event())

    async def _say(self, text: str, voice: str, tone: str | None = None, *, speaker: int | None = None) -> None:
        """One utterance: ``audio-start``, chunks as they are generated, ``audio-stop``."""
        request = await self.tts.prepare(text, voice, tone=tone, speaker=speaker)  # bad request → error, no audio
        rate = self.tts.sample_rate
        await self.write_event(AudioStart(rate=rate, width=SAMPLE_WIDTH, channels=CHANNELS).event())
        try:
            async for pcm in self.tts.audio(request):
                await self.write_event(AudioChunk(audio=pcm, rate=rate, width=SAMPLE_WIDTH, channels=CHANNELS).event())
        finally:
            with contextlib.suppress(ConnectionError):
                await self.write_event(AudioStop().event())


async def serve(
    tts: WyomingTTS,
    uri: str,
    *,
    zeroconf_name: str | None = None,
    zeroconf_host: str | None = None,
    started: asyncio.Event | None = None,
) -> None:
    """Serve Wyoming on ``uri`` (``tcp://HOST:PORT`` or ``unix://PATH``) until cancelled.

    Args:
        tts: the shared synthesis state.
        uri: where to listen.
        zeroconf_name: announce the (TCP) server over mDNS for Home Assistant's discovery under
            this name (needs the ``zeroconf`` package).
        zeroconf_host: the address to announce (default: the host's outgoing address).
        started: set once the server accepts connections.
    """
    if not uri.startswith(("tcp://", "unix://")):
        raise ValueError(f"--uri must be tcp://HOST:PORT or unix://PATH, not {uri!r}")
    server = AsyncServer.from_uri(uri)
    await server.start(lambda reader, writer: EchoForgeEventHandler(tts, reader, writer))
    if zeroconf_name is not None:
        port = getattr(server, "port", None)
        if port is None:
            raise ValueError("zeroconf discovery needs a tcp:// URI")
        try:
            from wyoming.zeroconf import HomeAssistantZeroconf
        except ImportError:
            raise ValueError("zeroconf discovery needs the zeroconf package: pip install zeroconf") from None
        await HomeAssistantZeroconf(port=port, name=zeroconf_name or None, host=zeroconf_host).register_server()
        log.info("announced over zeroconf as %r", zeroconf_name)
    log.info("wyoming server on %s (engine %s, %d voices)", uri, tts.engine_label(), len(tts.info().tts[0].voices))
    if started is not None:
        started.set()
    try:
        await asyncio.Event().wait()  # until cancelled (Ctrl+C, SIGTERM)
    finally:
        await server.stop()
