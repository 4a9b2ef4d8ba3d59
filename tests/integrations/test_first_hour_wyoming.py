"""Issue 25 (item 9) with the official ``wyoming`` client, as Home Assistant drives it.

``echoforge wyoming`` (espeak-ng) as a real process: a refused plain ``synthesize`` is ``error``
then close (as wyoming-piper); long text is spoken in full; HA's ``speaker`` option is honoured;
a client that hangs up mid-answer leaves no "Task exception was never retrieved" behind.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("wyoming")

from _servers import wait_until  # noqa: E402
from wyoming.error import Error  # noqa: E402
from wyoming.info import Describe  # noqa: E402
from wyoming.tts import Synthesize, SynthesizeVoice  # noqa: E402

from .test_wyoming import _client, _read, _utterances  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

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
