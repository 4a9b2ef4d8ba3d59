"""``WS /v1/realtime``: the official ``openai`` SDK's realtime client against a running server.

The server is the real app on a uvicorn thread (``AppServer``); the agent behind it is the same
core as ``/api/agent`` with the test's fakes as models (FakeVAD, FakeSTT, FakeLLM, FakeTTS), so
what a test waits for is true by construction: a gated LLM is still writing when the test
cancels or talks over it, on any machine. One test runs the real stack (Piper, Silero, Whisper,
the embedded LLM) on a spoken question from a WAV file.
"""

from __future__ import annotations

import asyncio
import base64
import json
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from _servers import AppServer

from echoforge.agent.config import AgentSettings
from echoforge.agent.pipeline import vad_params
from echoforge.agent.testing import (
    FakeLLM,
    FakeSTT,
    FakeTTS,
    FakeTurnModel,
    FakeVAD,
    fake_knowledge_base,
    silence,
    tone,
)
from echoforge.agent.vad import TurnDetector
from echoforge.audio import float_to_pcm16, pcm16_to_float, resample
from echoforge.engines.base import SynthesisRequest

openai = pytest.importorskip("openai")
from openai.types.realtime import RealtimeServerEvent  # noqa: E402
from pydantic import TypeAdapter  # noqa: E402

STRICT = TypeAdapter(RealtimeServerEvent)
# Only against a hang (pytest-timeout): no assertion depends on how long anything takes.
pytestmark = pytest.mark.timeout(300)

KEY = "ef_test_realtime_key_0123456789"
SERVER_NOTES = "# The EchoForge server\n\nThe EchoForge server listens on port 8000 by default.\n"
STORY = "Once upon a time a dragon lived on a hill. It guarded gold and slept all day long. One day a knight came."


def fake_models(tmp_path, stt_lines, llm, notes=True, **settings):
    """What ``app.state.agent_models`` holds, built from fakes (the router uses it as it is)."""
    cfg = AgentSettings(use_analysis=False, report_memory=False, **settings)
    kb = fake_knowledge_base(tmp_path / "kb", tmp_path / "index", {"server.md": SERVER_NOTES}) if notes else None
    return SimpleNamespace(
        settings=cfg,
        stt=FakeSTT(stt_lines),
        llm=llm,
        kb=kb,
        emotion_detector=None,
        new_detector=lambda: TurnDetector(vad_params(cfg), FakeVAD(), turn_model=FakeTurnModel(1.0)),
    )


@pytest.fixture
def serve(tmp_path):
    """``serve(models, settings=None) -> AppServer``: the app with FakeTTS and these agent models."""
    servers = []

    def _serve(models, settings=None):
        server = AppServer(tmp_path / "data", FakeTTS(seconds_per_word=0.1), settings).start()
        server.app.state.agent_models = models  # what agent_models() would have loaded
        servers.append(server)
        return server

    yield _serve
    for server in servers:
        server.stop()


def client_for(server, key="sk-unused"):
    return openai.OpenAI(
        api_key=key, base_url=server.url + "/v1", websocket_base_url=server.url.replace("http", "ws") + "/v1"
    )


def pcm24k(audio_16k: np.ndarray) -> bytes:
    return float_to_pcm16(resample(audio_16k, 16_000, 24_000))


def append_audio(conn, pcm: bytes, chunk_ms: int = 100) -> None:
    step = 24_000 * 2 * chunk_ms // 1000
    for i in range(0, len(pcm), step):
        conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + step]).decode())


def recv(conn):
    """The next server event, checked against the SDK's own types strictly (the SDK itself does not validate)."""
    raw = conn.recv_bytes()
    STRICT.validate_json(raw)
    return conn.parse_event(raw)


def recv_until(conn, kind: str, count: int = 1) -> list:
    """Events up to the ``count``-th of type ``kind`` (included)."""
    events = []
    while sum(e.type == kind for e in events) < count:
        events.append(recv(conn))
    return events


def types(events) -> list[str]:
    return [e.type for e in events]


def audio_of(events) -> bytes:
    return b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")


def text_message(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def test_spoken_question_with_server_vad(serve, tmp_path):
    models = fake_models(tmp_path, ["What port does the server use?"], FakeLLM(embedded=True))
    server = serve(models)
    wav = tmp_path / "question.wav"  # what a user holds: a recording
    sf.write(
        wav, resample(np.concatenate([silence(0.3), tone(1.2), silence(0.9)]), 16_000, 24_000), 24_000, subtype="PCM_16"
    )
    pcm, rate = sf.read(wav, dtype="int16")
    assert rate == 24_000
    with client_for(server).realtime.connect(model="gpt-realtime") as conn:
        created = recv(conn)
        assert created.type == "session.created" and created.session.model == "gpt-realtime"
        td = created.session.audio.input.turn_detection
        assert td.type == "server_vad" and td.silence_duration_ms == models.settings.turn.silence_ms
        assert created.session.audio.output.format.rate == 24_000
        vad = {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 400, "prefix_padding_ms": 200}
        conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": vad}}})
        td = recv_until(conn, "session.updated")[-1].session.audio.input.turn_detection
        assert (td.threshold, td.silence_duration_ms, td.prefix_padding_ms) == (0.6, 400, 200)
        append_audio(conn, pcm.tobytes())
        events = recv_until(conn, "response.done")
    kinds = types(events)
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
             "conversation.item.input_audio_transcription.completed", "response.created", "response.output_item.added",
             "response.content_part.added", "response.output_audio_transcript.delta", "response.output_audio.delta",
             "response.output_audio.done", "response.output_audio_transcript.done", "response.content_part.done",
             "response.output_item.done", "response.done"]  # fmt: skip
    assert [kinds.index(k) for k in order] == sorted(kinds.index(k) for k in order)
    started = events[kinds.index("input_audio_buffer.speech_started")]
    stopped = events[kinds.index("input_audio_buffer.speech_stopped")]
    # The tone runs from 300 to 1500 ms of the recording (positions in the audio, not times).
    assert 250 <= started.audio_start_ms <= 450 and 1400 <= stopped.audio_end_ms <= 1700, (started, stopped)
    heard = events[kinds.index("conversation.item.input_audio_transcription.completed")]
    assert heard.transcript == "What port does the server use?" and heard.item_id == started.item_id
    done = events[-1]
    assert done.response.status == "completed" and done.response.output[0].role == "assistant"
    # The answer is the notes' sentence (the core's grounding: quoted for the embedded model).
    transcript = events[kinds.index("response.output_audio_transcript.done")].transcript
    assert "8000" in transcript and done.response.output[0].content[0].transcript == transcript
    deltas = "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta")
    assert deltas == transcript
    audio = np.frombuffer(audio_of(events), "<i2")
    expected = FakeTTS(seconds_per_word=0.1).audio_for(transcript).size  # FakeTTS speaks at 24 kHz
    assert audio.size == expected and np.abs(audio).max() > 3000


def test_semantic_vad_is_the_agents_smart_turn(serve, tmp_path):
    pytest.importorskip("pipecat")  # the smart-turn model ships in pipecat-ai's wheel
    server = serve(fake_models(tmp_path, ["Tell me something nice."], FakeLLM("You are doing great."), notes=False))
    with client_for(server).realtime.connect(model="echoforge") as conn:
        recv_until(conn, "session.created")
        semantic = {"type": "semantic_vad", "eagerness": "sometimes"}
        conn.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"turn_detection": semantic}}},
            }
        )
        assert recv_until(conn, "error")[-1].error.param == "session.audio.input.turn_detection.eagerness"
        semantic["eagerness"] = "high"
        conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": semantic}}})
        td = recv_until(conn, "session.updated")[-1].session.audio.input.turn_detection
        assert (td.type, td.eagerness) == ("semantic_vad", "high")
        # Whatever the model makes of a tone, 1.5 s of silence ends the turn (high: ≤ 600 ms when unfinished).
        append_audio(conn, pcm24k(np.concatenate([silence(0.3), tone(1.0), silence(1.5)])))
        events = recv_until(conn, "response.done")
    heard = next(e for e in events if e.type == "conversation.item.input_audio_transcription.completed")
    assert heard.transcript == "Tell me something nice." and events[-1].response.status == "completed"


def test_server_vad_without_create_response_waits_for_response_create(serve, tmp_path):
    llm = FakeLLM("Here you go.")
    server = serve(fake_models(tmp_path, ["Give me a moment."], llm, notes=False))
    with client_for(server).realtime.connect(model="echoforge") as conn:
        recv_until(conn, "session.created")
        vad = {"type": "server_vad", "create_response": False}
        conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": vad}}})
        assert recv_until(conn, "session.updated")[-1].session.audio.input.turn_detection.create_response is False
        append_audio(conn, pcm24k(np.concatenate([silence(0.3), tone(1.0), silence(0.9)])))
        spoken = recv_until(conn, "conversation.item.done")
        assert spoken[-1].item.content[0].transcript == "Give me a moment."
        conn.response.create()
        events = recv_until(conn, "response.done")
    assert not [e for e in spoken + events if e.type in ("error", "response.created")][1:]
    assert events[0].type == "response.created" and events[-1].response.status == "completed"
    assert len(llm.calls) == 1 and llm.calls[0][-1]["content"].endswith("Give me a moment.")


def test_manual_turns_commit_then_response_create(serve, tmp_path):
    llm = FakeLLM("Sure, here is a short and friendly answer.")
    server = serve(fake_models(tmp_path, ["Please say something friendly."], llm))
    with client_for(server).realtime.connect(model="echoforge") as conn:
        recv_until(conn, "session.created")
        conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        updated = recv_until(conn, "session.updated")[-1]
        assert updated.session.audio.input.turn_detection is None
        conn.input_audio_buffer.commit()  # nothing appended yet
        error = recv_until(conn, "error")[-1]
        assert error.error.code == "input_audio_buffer_commit_empty" and error.error.type == "invalid_request_error"
        append_audio(conn, pcm24k(np.concatenate([silence(0.2), tone(1.0), silence(2.0)])))
        conn.input_audio_buffer.commit()
        events = recv_until(conn, "conversation.item.done")
        # No VAD in manual mode: the silence after the speech ended nothing, the commit did.
        assert "input_audio_buffer.speech_started" not in types(events)
        committed = next(e for e in events if e.type == "input_audio_buffer.committed")
        heard = next(e for e in events if e.type == "conversation.item.input_audio_transcription.completed")
        assert heard.item_id == committed.item_id and heard.transcript == "Please say something friendly."
        assert events[-1].item.content[0].transcript == heard.transcript
        conn.response.create()
        events = recv_until(conn, "response.done")
    assert events[0].type == "response.created"  # nothing was answered before response.create
    assert events[-1].response.status == "completed"
    transcript = next(e for e in events if e.type == "response.output_audio_transcript.done").transcript
    assert transcript == "Sure, here is a short and friendly answer." and audio_of(events)
    question = llm.calls[0][-1]
    assert question["role"] == "user" and question["content"].endswith("Please say something friendly.")


def test_text_message_gets_a_spoken_answer_with_the_responses_instructions(serve, tmp_path):
    llm = FakeLLM(lambda messages: "Happy to help with that today.")
    server = serve(fake_models(tmp_path, [], llm))
    with client_for(server).realtime.connect(model="echoforge") as conn:
        recv_until(conn, "session.created")
        conn.conversation.item.create(item=text_message("Tell me something cheerful."))
        added = recv_until(conn, "conversation.item.done")
        assert (
            added[0].type == "conversation.item.added"
            and added[-1].item.content[0].text == "Tell me something cheerful."
        )
        conn.response.create(response={"instructions": "You are Pip. Be cheerful.", "metadata": {"turn": "1"}})
        events = recv_until(conn, "response.done")
    done = events[-1].response
    assert done.status == "completed" and done.metadata == {"turn": "1"}
    assert done.output[0].content[0].transcript == "Happy to help with that today."
    assert done.usage.output_tokens == 6
    system = llm.calls[0][0]
    assert system["role"] == "system" and system["content"].startswith("You are Pip. Be cheerful.")
    assert len(audio_of(events)) // 2 == FakeTTS(seconds_per_word=0.1).audio_for("Happy to help with that today.").size
    # The agent's speech went through the server's synthesis service (admission, metrics) like any request.
    assert server.services.synthesis.stats.streams >= 1


def test_text_only_reply_to_an_audio_message_then_delete_it(serve, tmp_path):
    llm = FakeLLM("Hello in plain text.")
    server = serve(fake_models(tmp_path, ["Say hello in text."], llm, notes=False))
    with client_for(server).realtime.connect(model="echoforge") as conn:
        recv_until(conn, "session.created")
        conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        assert recv_until(conn, "session.updated")[-1].session.output_modalities == ["text"]
        clip = base64.b64encode(pcm24k(tone(0.8))).decode()
        conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": clip}]}
        )
        events = recv_until(conn, "conversation.item.done")
        heard = next(e for e in events if e.type == "conversation.item.input_audio_transcription.completed")
        assert heard.transcript == "Say hello in text."
        user_item = heard.item_id
        conn.response.create()
        events = recv_until(conn, "response.done")
        assert "response.output_audio.delta" not in types(events)
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello in plain text."
        output = events[-1].response.output[0]
        assert output.content[0].type == "output_text" and output.content[0].text == "Hello in plain text."
        conn.session.update(session={"type": "realtime", "audio": {"output": {"voice": "no-such-voice"}}})
        error = recv_until(conn, "error")[-1].error
        assert error.code == "voice_not_found" and error.param == "session.audio.output.voice"
        conn.conversation.item.delete(item_id=user_item)
        assert recv_until(conn, "conversation.item.deleted")[-1].item_id == user_item
        conn.send({"type": "conversation.item.retrieve", "item_id": user_item})
        assert recv_until(conn, "error")[-1].error.code == "item_not_found"


def test_cancel_mid_response_keeps_what_was_played(serve, tmp_path):
    llm = FakeLLM(STORY, gated=True)
    server = serve(fake_models(tmp_path, [], llm, notes=False, llm_max_tokens=120, reply_max_sentences=10))
    with client_for(server).realtime.connect(model="echoforge") as conn:
        recv_until(conn, "session.created")
        conn.conversation.item.create(item=text_message("Tell me a story about a dragon."))
        conn.response.create()
        llm.allow(12)  # the first sentence and two more words; the rest is held back
        # 15 chunks of 40 ms received: at least 600 ms sent, so at least 480 ms played (120 ms lead).
        first = recv_until(conn, "response.output_audio.delta", 15)
        response_id = first[-1].response_id
        conn.response.cancel()
        events = recv_until(conn, "response.done")
        done = events[-1].response
        assert done.id == response_id and done.status == "cancelled"
        assert done.status_details.reason == "client_cancelled"
        assert llm.stopped.wait(30)  # the model saw the stop (the wait only guards against a hang)
        item = done.output[0]
        heard = item.content[0].transcript
        assert item.status == "incomplete" and heard
        assert STORY.split()[: len(heard.split())] == heard.split() and len(heard.split()) < len(STORY.split())
        # The session goes on: the next response runs to its end.
        llm.open()
        conn.conversation.item.create(item=text_message("And then what happened?"))
        conn.response.create()
        events = recv_until(conn, "response.done")
    assert events[-1].response.status == "completed"
    # The cut reply is in the history as it was heard, not as it was written.
    history = [m for m in llm.calls[-1] if m["role"] == "assistant"]
    assert history and history[-1]["content"] == heard


def test_barge_in_cancels_and_truncation_keeps_what_was_played(serve, tmp_path):
    llm = FakeLLM(STORY, gated=True)
    stt = ["Tell me a long story about a dragon.", "Stop talking please."]
    server = serve(fake_models(tmp_path, stt, llm, notes=False, llm_max_tokens=120, reply_max_sentences=10))
    with client_for(server).realtime.connect(model="echoforge") as conn:
        recv_until(conn, "session.created")
        append_audio(conn, pcm24k(np.concatenate([silence(0.3), tone(1.2), silence(0.9)])))
        recv_until(conn, "response.created")
        llm.allow(12)
        first = recv_until(conn, "response.output_audio.delta", 15)
        item_id = first[-1].item_id
        # The user talks over the agent (louder than its echo could be).
        append_audio(conn, pcm24k(np.concatenate([silence(0.2), tone(0.6, 0.5)])))
        events = recv_until(conn, "response.done")
        kinds = types(events)
        assert "input_audio_buffer.speech_started" in kinds
        assert kinds.index("input_audio_buffer.speech_started") < kinds.index("response.done")
        done = events[-1].response
        assert done.status == "cancelled" and done.status_details.reason == "turn_detected"
        assert not [e for e in events[kinds.index("response.done") :] if e.type == "response.output_audio.delta"]
        server_heard = done.output[0].content[0].transcript
        assert server_heard and STORY.startswith(server_heard.rstrip(".")[:10])
        # The client played only part of what it received: it says so, the history follows.
        received = len(audio_of(first + events)) // 2
        played_ms = 150
        assert received * 1000 // 24_000 > played_ms
        conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=played_ms)
        truncated = recv_until(conn, "conversation.item.truncated")[-1]
        assert truncated.item_id == item_id and truncated.audio_end_ms == played_ms
        conn.send({"type": "conversation.item.retrieve", "item_id": item_id})
        item = recv_until(conn, "conversation.item.retrieved")[-1].item
    words = item.content[0].transcript.split()
    assert len(words) < len(server_heard.split()) and server_heard.split()[: len(words)] == words


def test_bad_events_get_error_events_and_the_socket_stays_open(serve, tmp_path):
    server = serve(fake_models(tmp_path, [], FakeLLM()))
    with client_for(server).realtime.connect(model="echoforge") as conn:
        recv_until(conn, "session.created")
        bad = [
            ("this is not json", "invalid_json", None),
            (json.dumps({"type": "no.such.event"}), "invalid_event", "type"),
            (json.dumps({"type": "input_audio_buffer.append", "audio": "***"}), "invalid_value", "audio"),
            (json.dumps({"type": "session.update", "session": {"type": "realtime", "tools": [{"type": "function", "name": "f"}]}}),
             "unsupported_feature", "session.tools"),
            (json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}}),
             "unsupported_feature", "session.audio.input.format"),
            (json.dumps({"type": "response.cancel", "event_id": "evt_client_1"}), "response_cancel_not_active", None),
            (json.dumps({"type": "conversation.item.delete", "item_id": "item_nope"}), "item_not_found", "item_id"),
            (json.dumps([1, 2, 3]), "invalid_event", None),
            (json.dumps({"type": "session.update", "session": {"instructions": "x" * 20_000}}), "string_above_max_length",
             "session.instructions"),
        ]  # fmt: skip
        for raw, code, param in bad:
            conn.send_raw(raw)
            error = recv(conn)
            assert error.type == "error", raw
            assert (
                error.error.type == "invalid_request_error" and error.error.code == code and error.error.param == param
            )
            assert error.error.message
        assert error.error.event_id is None
        conn.send_raw(json.dumps({"type": "response.cancel", "event_id": "evt_client_1"}))
        assert recv(conn).error.event_id == "evt_client_1"
        # Nothing to answer: an empty response, at once (the agent only answers the user).
        conn.response.create()
        created, done = recv(conn), recv(conn)
        assert created.type == "response.created" and done.type == "response.done"
        assert done.response.status == "completed" and done.response.output == []
        # Still open and working.
        conn.session.update(
            session={"type": "realtime", "instructions": "Be brief.", "audio": {"output": {"speed": 1.2}}}
        )
        updated = recv_until(conn, "session.updated")[-1]
    assert updated.session.instructions == "Be brief." and updated.session.audio.output.speed == 1.2


def test_api_key_as_bearer_when_keys_are_configured(serve, tmp_path):
    server = serve(fake_models(tmp_path, [], FakeLLM()), {"server": {"api_keys": [KEY]}})
    with client_for(server, key="wrong-key").realtime.connect(model="echoforge") as conn:
        error = recv(conn)
        assert error.type == "error" and error.error.code == "invalid_api_key"
        with pytest.raises(Exception, match="(?i)closed|1008"):
            recv(conn)
    with client_for(server, key=KEY).realtime.connect(model="echoforge") as conn:
        assert recv(conn).type == "session.created"


@pytest.mark.integration
def test_real_stack_holds_a_spoken_conversation(models, piper, tmp_path):
    """Two questions in Piper's voice, from WAV files; Silero, Whisper, the notes and the LLM answer in Piper's voice."""

    def question(text: str, name: str) -> bytes:
        wav = tmp_path / name  # what a user holds: recordings
        sf.write(
            wav,
            resample(piper.synthesize(SynthesisRequest(text=text)), piper.sample_rate, 24_000),
            24_000,
            subtype="PCM_16",
        )
        data, rate = sf.read(wav, dtype="int16")
        assert rate == 24_000
        return pcm24k(silence(0.3)) + data.tobytes() + pcm24k(silence(1.2))

    server = AppServer(tmp_path / "data", piper).start()
    try:
        server.app.state.agent_models = models
        with client_for(server).realtime.connect(model="echoforge") as conn:
            recv_until(conn, "session.created")
            append_audio(conn, question("What port does the server use?", "port.wav"))
            first = recv_until(conn, "response.done")
            append_audio(conn, question("How long do I bake the loaf?", "bread.wav"))
            second = recv_until(conn, "response.done")
    finally:
        server.stop()
    for events, words, answer in ((first, "port", "8000"), (second, "bake", "twenty")):
        heard = next(e for e in events if e.type == "conversation.item.input_audio_transcription.completed").transcript
        assert words in heard.lower()
        done = events[-1].response
        assert done.status == "completed" and answer in done.output[0].content[0].transcript
        audio = pcm16_to_float(audio_of(events))
        assert audio.size / 24_000 > 1.0 and np.abs(audio).max() > 0.1


async def test_pipecats_openai_realtime_service_talks_to_the_agent(serve, tmp_path):
    """pipecat's ``OpenAIRealtimeLLMService`` (its own websocket client and event parser), unchanged."""
    pytest.importorskip("pipecat")
    from pipecat.frames.frames import EndFrame, ErrorFrame, LLMContextFrame, LLMFullResponseEndFrame, TTSAudioRawFrame
    from pipecat.frames.frames import TTSTextFrame as PipecatTTSText
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.frame_processor import FrameProcessor
    from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
    from pipecat.workers.runner import WorkerRunner

    class Sink(FrameProcessor):
        def __init__(self) -> None:
            super().__init__()
            self.frames, self.done = [], asyncio.Event()

        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            self.frames.append(frame)
            if isinstance(frame, LLMFullResponseEndFrame | ErrorFrame):
                self.done.set()
            await self.push_frame(frame, direction)

    server = serve(fake_models(tmp_path, [], FakeLLM("Happy to help with that today."), notes=False))
    service = OpenAIRealtimeLLMService(api_key="sk-local", base_url=server.url.replace("http", "ws") + "/v1/realtime")
    sink = Sink()
    worker = PipelineWorker(Pipeline([service, sink]), cancel_on_idle_timeout=False, params=PipelineParams())
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker, frame):
        started.set()

    async def drive() -> None:
        await started.wait()
        context = LLMContext(messages=[{"role": "user", "content": "Tell me something cheerful."}])
        await worker.queue_frame(LLMContextFrame(context=context))
        await sink.done.wait()
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner()
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), drive())
    assert not [f for f in sink.frames if isinstance(f, ErrorFrame)]
    assert [f.text for f in sink.frames if isinstance(f, PipecatTTSText)] == ["Happy to help with that today."]
    audio = [f for f in sink.frames if isinstance(f, TTSAudioRawFrame)]
    assert {f.sample_rate for f in audio} == {24_000}
    assert (
        sum(len(f.audio) for f in audio) // 2
        == FakeTTS(seconds_per_word=0.1).audio_for("Happy to help with that today.").size
    )
