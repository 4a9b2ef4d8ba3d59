"""A Wyoming TTS server (Home Assistant's Assist) on top of EchoForge's synthesis service.

Protocol (the ``wyoming`` package; see its ``tts`` module):

* ``describe`` → ``info``: one TTS program, ``echoforge``, whose voices are the
  :class:`~echoforge.server.services.voices.VoiceStore` voices with their languages; the
  descriptions name the engine and say when it is a fallback (Piper/espeak-ng, not CSM).
* ``synthesize`` (voice by name, or by language) → ``audio-start``, ``audio-chunk`` … as the
  engine produces them, ``audio-stop``.
* Streaming (``synthesize-start``, ``synthesize-chunk`` …, ``synthesize-stop``): every sentence
  is spoken as soon as it is complete — its own ``audio-start``/``audio-chunk``/``audio-stop`` —
  so Home Assistant speaks while its LLM still writes; ``synthesize-stopped`` ends the stream.
  The ``synthesize`` that clients send inside a stream, for servers without streaming, is
  ignored there.
* Problems (unknown voice, empty text, busy engine) are answered with an ``error`` event and
  the connection stays open.

The engine, voices and :class:`~echoforge.server.services.synthesis.SynthesisService` live in
one :class:`WyomingTTS` shared by all connections; :class:`EchoForgeEventHandler` is one
connection. Requests are built by ``SynthesisService.build_request`` (voice resolution, tone
modifiers such as ``(gently) …``), audio comes from ``SynthesisService.stream`` (engine in worker
threads) and is converted by :func:`echoforge.audio.float_to_pcm16`.
"""

from __future__ import annotations

import asyncio
import contextlib
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

    def __init__(self, synthesis: SynthesisService, *, default_voice: str = "alloy", samples_per_chunk: int = 1024) -> None:
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
            requested: ``name`` (id, name or OpenAI alias, as everywhere in EchoForge) wins;
                otherwise ``language`` picks the first voice of that language (``en`` matches
                ``en-US``); otherwise the default voice.

        Returns:
            The voice id.

        Raises:
            NotFound: no such voice, or no voice for the language.
        """
        if requested is None or (not requested.name and not requested.language):
            return self.default_voice
        if requested.name:
            return self.synthesis.voices.get(requested.name).id
        want = _norm_language(requested.language or "")
        voices: list[Voice] = self.synthesis.voices.list()
        for exact in (True, False):
            for v in voices:
                have = _norm_language(v.tags.get("language") or "en-US")
                if have == want or (not exact and have.split("-")[0] == want.split("-")[0]):
                    return v.id
        raise NotFound(f"no voice for language {requested.language!r}", param="voice", code="voice_not_found")

    async def prepare(self, text: str, voice: str, *, tone: str | None = None) -> SynthesisRequest:
        """Build the engine request (voice applied, tone modifiers parsed off) in a worker thread.

        Args:
            text: what to say; a leading ``(tone)`` modifier is parsed off by ``build_request``.
            voice: an EchoForge voice id.
            tone: the utterance's tone when ``text`` carries no modifier of its own.

        Raises:
            ApiError: empty or over-long text, unknown voice (as the HTTP API would answer).
        """
        return await asyncio.to_thread(self.synthesis.build_request, text=text, voice=voice, instructions=tone)

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


class EchoForgeEventHandler(AsyncEventHandler):
    """One Wyoming connection."""

    def __init__(self, tts: WyomingTTS, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.tts = tts
        self.stream: _TextStream | None = None

    async def handle_event(self, event: Event) -> bool:
        """Answer one event; always keep the connection (errors become ``error`` events)."""
        if Describe.is_type(event.type):
            await self.write_event(self.tts.info().event())
            return True
        try:
            if SynthesizeStart.is_type(event.type):
                start = SynthesizeStart.from_event(event)
                self.stream = _TextStream(voice=None)
                self.stream.voice = self.tts.resolve_voice(start.voice)
            elif SynthesizeChunk.is_type(event.type):
                await self._stream_chunk(SynthesizeChunk.from_event(event).text)
            elif SynthesizeStop.is_type(event.type):
                await self._stream_stop()
            elif Synthesize.is_type(event.type):
                if self.stream is not None:
                    return True  # the stream's text again, for servers without streaming
                synthesize = Synthesize.from_event(event)
                voice = self.tts.resolve_voice(synthesize.voice)
                await self._say(" ".join(synthesize.text.split()), voice)
        except ApiError as exc:  # unknown voice, empty text, 503 busy …
            await self._error(exc.message, exc.code or type(exc).__name__)
        except EngineBusy as exc:
            await self._error(str(exc), "server_overloaded")
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:  # the engine failed: report it, keep the connection
            log.warning("wyoming synthesis failed: %s", exc, exc_info=not isinstance(exc, (ValueError, RuntimeError)))
            await self._error(f"synthesis failed: {exc}", "engine_error")
        return True

    async def _error(self, text: str, code: str) -> None:
        log.info("wyoming error %s: %s", code, text)
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
            await self._say(sentence, stream.voice, stream.tone.see(sentence))

    async def _stream_stop(self) -> None:
        stream, self.stream = self.stream, None
        if stream is None:
            raise ApiError("synthesize-stop outside a stream: send synthesize-start first", code="bad_stream")
        try:
            if stream.voice is not None:
                for sentence in sentences(stream.buffer):
                    await self._say(sentence, stream.voice, stream.tone.see(sentence))
        finally:
            await self.write_event(SynthesizeStopped().event())

    async def _say(self, text: str, voice: str, tone: str | None = None) -> None:
        """One utterance: ``audio-start``, chunks as they are generated, ``audio-stop``."""
        request = await self.tts.prepare(text, voice, tone=tone)  # a bad request → error, no audio
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
