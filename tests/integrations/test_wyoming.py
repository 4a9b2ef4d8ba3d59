"""``echoforge wyoming`` driven over TCP by the wyoming package's own client (espeak-ng engine)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("wyoming")

from wyoming.audio import AudioChunk, AudioStart, AudioStop  # noqa: E402
from wyoming.client import AsyncTcpClient  # noqa: E402
from wyoming.error import Error  # noqa: E402
from wyoming.info import Describe, Info  # noqa: E402
from wyoming.tts import (  # noqa: E402
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]  # a hang guard sized for a busy box


def _client(uri: str) -> AsyncTcpClient:
    host, port = uri.removeprefix("tcp://").rsplit(":", 1)
    return AsyncTcpClient(host, int(port))


async def _read(client: AsyncTcpClient, until: tuple[str, ...], timeout: float = 30.0) -> list:
    """Events up to and including the first whose type is in ``until``."""
    events = []
    while True:
        event = await asyncio.wait_for(client.read_event(), timeout)
        assert event is not None, "server closed the connection"
        events.append(event)
        if event.type in until:
            return events


def _utterances(events) -> list[tuple[AudioStart, bytes]]:
    """Split audio events into (audio-start, PCM) per utterance, checking their order and format."""
    out: list[tuple[AudioStart, bytes]] = []
    start, pcm = None, bytearray()
    for event in events:
        if AudioStart.is_type(event.type):
            assert start is None, "audio-start inside an utterance"
            start, pcm = AudioStart.from_event(event), bytearray()
        elif AudioChunk.is_type(event.type):
            assert start is not None, "audio-chunk before audio-start"
            chunk = AudioChunk.from_event(event)
            assert (chunk.rate, chunk.width, chunk.channels) == (start.rate, start.width, start.channels)
            pcm += chunk.audio
        elif AudioStop.is_type(event.type):
            assert start is not None, "audio-stop without audio-start"
            out.append((start, bytes(pcm)))
            start = None
    assert start is None, "utterance without audio-stop"
    return out


def _speech(pcm: bytes, rate: int) -> np.ndarray:
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    assert audio.size > rate // 4, f"only {audio.size} samples"
    assert float(np.sqrt(np.mean(audio**2))) > 1e-3, "silent"
    return audio


async def test_describe_lists_the_voices_with_engine_and_languages(wyoming_server):
    uri, _ = wyoming_server
    async with _client(uri) as client:
        await client.write_event(Describe().event())
        (event,) = await _read(client, ("info",))
    info = Info.from_event(event)
    (program,) = info.tts
    assert program.name == "echoforge" and program.supports_synthesize_streaming
    assert "espeak" in program.description and "fallback" in program.description
    names = {v.name for v in program.voices}
    assert {"atlas", "juniper"} <= names
    for voice in program.voices:
        assert voice.languages and voice.languages[0].startswith("en")
        assert "fallback" in voice.description


async def test_synthesize_streams_audio_chunks(wyoming_server):
    uri, _ = wyoming_server
    async with _client(uri) as client:
        await client.write_event(
            Synthesize(text="Hello from EchoForge. This is a second sentence.", voice=SynthesizeVoice(name="juniper")).event()
        )
        events = await _read(client, ("audio-stop", "error"))
    assert not any(Error.is_type(e.type) for e in events), events
    ((start, pcm),) = _utterances(events)
    assert (start.rate, start.width, start.channels) == (22050, 2, 1)  # espeak-ng's rate, s16le mono
    assert sum(AudioChunk.is_type(e.type) for e in events) > 1  # sent in pieces, not one blob
    _speech(pcm, start.rate)


async def test_voice_by_alias_language_and_tone_modifier(wyoming_server):
    uri, _ = wyoming_server
    async with _client(uri) as client:
        for voice in (SynthesizeVoice(name="alloy"), SynthesizeVoice(language="en_US"), None):
            await client.write_event(Synthesize(text="(gently) I hear you.", voice=voice).event())
            events = await _read(client, ("audio-stop", "error"))
            assert not any(Error.is_type(e.type) for e in events), events
            ((start, pcm),) = _utterances(events)
            _speech(pcm, start.rate)


async def test_streaming_synthesis_speaks_each_sentence_as_it_completes(wyoming_server):
    uri, _ = wyoming_server
    async with _client(uri) as client:
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="atlas")).event())
        for token in ["(calm) The weather", " is mild today", ". Tomor", "row it will"]:
            await client.write_event(SynthesizeChunk(text=token).event())
        # The first sentence is complete: its audio comes before the stream ends.
        first = await _read(client, ("audio-stop", "error"))
        assert not any(Error.is_type(e.type) for e in first), first
        await client.write_event(SynthesizeChunk(text=" rain.").event())
        # Clients also send the whole text as a plain synthesize inside the stream (for servers
        # without streaming); it must not be spoken twice.
        await client.write_event(Synthesize(text="(calm) The weather is mild today. Tomorrow it will rain.").event())
        await client.write_event(SynthesizeStop().event())
        rest = await _read(client, ("synthesize-stopped",))
    assert SynthesizeStopped.is_type(rest[-1].type)
    assert not any(Error.is_type(e.type) for e in rest), rest
    utterances = _utterances(first) + _utterances(rest)
    assert len(utterances) == 2  # one per sentence
    for start, pcm in utterances:
        assert (start.rate, start.width, start.channels) == (22050, 2, 1)
        _speech(pcm, start.rate)


async def test_unknown_voice_is_a_clear_error_then_close_and_a_stream_goes_on(wyoming_server):
    uri, _ = wyoming_server
    async with _client(uri) as client:  # plain synthesize: error, then close (as wyoming-piper)
        await client.write_event(Synthesize(text="Hello.", voice=SynthesizeVoice(name="no-such-voice")).event())
        (event,) = await _read(client, ("error", "audio-start"))
        error = Error.from_event(event)
        assert error.code == "voice_not_found" and "no-such-voice" in error.text
        assert await asyncio.wait_for(client.read_event(), 30) is None

    async with _client(uri) as client:  # inside a stream: error, and the stream is still answered
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="no-such-voice")).event())
        (event,) = await _read(client, ("error",))
        assert Error.from_event(event).code == "voice_not_found"
        await client.write_event(SynthesizeChunk(text="Ignored. ").event())
        await client.write_event(SynthesizeStop().event())
        events = await _read(client, ("synthesize-stopped",))
        assert len(events) == 1  # nothing spoken for the refused stream

        await client.write_event(Synthesize(text="   ").event())
        (event,) = await _read(client, ("error", "audio-start"))
        assert Error.is_type(event.type) and "nothing to say" in Error.from_event(event).text
        assert await asyncio.wait_for(client.read_event(), 30) is None


def test_bad_uri_and_unknown_default_voice_fail_with_one_line(tmp_path):
    import subprocess

    from _servers import child_env, echoforge_cli

    from .conftest import ESPEAK_ENV

    for args, expected in (
        (["--uri", "http://127.0.0.1:1"], "tcp://HOST:PORT"),
        (["--voice", "no-such-voice", "--uri", "tcp://127.0.0.1:1"], "no-such-voice"),
    ):
        proc = subprocess.run(
            [*echoforge_cli(), "wyoming", "--engine", "espeak", *args],
            env=child_env(**ESPEAK_ENV, ECHOFORGE_DATA_DIR=str(tmp_path)), cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert "error:" in proc.stderr and expected in proc.stderr and "Traceback" not in proc.stderr


def test_tone_is_parsed_by_the_synthesis_service_and_carried_across_sentences(tmp_path):
    from echoforge.analysis.params import tone_from_instructions
    from echoforge.config import load_settings
    from echoforge.engines import create_engine
    from echoforge.integrations import ToneCarry
    from echoforge.integrations.wyoming import WyomingTTS
    from echoforge.server.services.synthesis import SynthesisService
    from echoforge.server.services.voices import VoiceStore

    settings = load_settings(data_dir=str(tmp_path), engine="espeak")
    synthesis = SynthesisService(create_engine(settings), VoiceStore(tmp_path), settings)
    try:
        tts = WyomingTTS(synthesis)
        calm = tone_from_instructions("calm")
        carry = ToneCarry()
        first, second = "(gently) I hear you.", "That sounds hard."
        r1 = asyncio.run(tts.prepare(first, "atlas", tone=carry.see(first)))
        r2 = asyncio.run(tts.prepare(second, "atlas", tone=carry.see(second)))
        assert r1.text == "I hear you." and r2.text == "That sounds hard."  # never spoken
        for r in (r1, r2):
            assert (r.temperature, r.topk) == (calm["temperature"], calm["topk"])
        plain = asyncio.run(tts.prepare("That sounds hard.", "atlas"))
        assert (plain.temperature, plain.topk) == (settings.generation.temperature, settings.generation.topk)
        assert tts.resolve_voice(None) == synthesis.voices.get("alloy").id  # the default voice
    finally:
        synthesis.close()


#  Home Assistant's plain synthesize: errors close, long text, speaker, hang-ups


pytest.importorskip("wyoming")

from _servers import wait_until  # noqa: E402

from .test_wyoming import _client, _read, _utterances  # noqa: E402

SENTENCE = "The river rose by 3.5 metres overnight, and Dr. Smith closed the old bridge to traffic. "


async def _until_closed(client, timeout: float = 30.0) -> list:
    """Every event until the server closes the connection."""
    events = []
    while (event := await asyncio.wait_for(client.read_event(), timeout)) is not None:
        events.append(event)
    return events


@pytest.mark.parametrize(
    ("synthesize", "code"),
    [
        (Synthesize(text="Hello.", voice=SynthesizeVoice(name="no-such-voice")), "voice_not_found"),
        (Synthesize(text="   "), None),
        (Synthesize(text="x" * 5000), None),
        (Synthesize(text="Hello.", voice=SynthesizeVoice(name="alloy", speaker="no-such-speaker")), "voice_not_found"),
    ],
)
async def test_a_refused_plain_synthesize_is_an_error_then_close(wyoming_server, synthesize, code):
    uri, _ = wyoming_server
    async with _client(uri) as client:
        await client.write_event(synthesize.event())
        events = await _until_closed(client)  # Home Assistant's reader would wait forever otherwise
    assert [e.type for e in events] == ["error"], events
    error = Error.from_event(events[0])
    assert error.text and (code is None or error.code == code)


async def test_plain_synthesize_speaks_long_text_in_full(wyoming_server):
    uri, _ = wyoming_server
    text = (SENTENCE * 30).strip()  # ≈ 2,600 characters: ≈ 2.5 minutes, over the old 90 s limit
    async with _client(uri) as client:
        await client.write_event(Synthesize(text=text, voice=SynthesizeVoice(name="atlas")).event())
        events = await _read(client, ("audio-stop", "error"), timeout=90)
        assert not any(Error.is_type(e.type) for e in events), events
        ((start, pcm),) = _utterances(events)  # one utterance, as a plain synthesize answers
        assert len(pcm) / 2 / start.rate > 100, len(pcm) / 2 / start.rate
        await client.write_event(Describe().event())  # the connection is still served after success
        await _read(client, ("info",))


async def test_home_assistants_speaker_option_picks_the_voice(wyoming_server):
    uri, _ = wyoming_server

    async def say(voice: SynthesizeVoice) -> bytes:
        async with _client(uri) as client:
            await client.write_event(Synthesize(text="Good morning.", voice=voice).event())
            ((_, pcm),) = _utterances(await _read(client, ("audio-stop", "error")))
            return pcm

    juniper = await say(SynthesizeVoice(name="juniper"))
    atlas = await say(SynthesizeVoice(name="atlas"))
    assert juniper != atlas  # distinct espeak-ng variants
    assert await say(SynthesizeVoice(name="atlas", speaker="juniper")) == juniper


async def test_a_client_that_hangs_up_mid_answer_leaves_no_task_exception(wyoming_server):
    uri, proc = wyoming_server
    before = proc.log().count("wyoming client disconnected")
    client = _client(uri)
    await client.connect()
    await client.write_event(Synthesize(text=(SENTENCE * 20).strip()).event())
    await asyncio.wait_for(client.read_event(), 30)  # audio-start: it is answering
    client._writer.transport.abort()  # hang up hard (RST), mid-answer
    await client.disconnect()
    wait_until(lambda: proc.log().count("wyoming client disconnected") > before, 60, "the disconnect to be logged")
    async with _client(uri) as other:  # and the server still serves others
        await other.write_event(Describe().event())
        await _read(other, ("info",))
    assert "Task exception was never retrieved" not in proc.log()
    assert "Traceback" not in proc.log()
