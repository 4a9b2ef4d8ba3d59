"""Sentence splitting, prompt building, the embedded LLM's streaming/cancellation, AgentSettings."""

from __future__ import annotations

import threading
import time

import pytest

from echoforge.agent.config import AgentSettings, agent_settings
from echoforge.agent.llm import build_messages, style_instructions
from echoforge.agent.rag import Passage
from echoforge.agent.sentences import SentenceSplitter
from echoforge.config import ConfigError, load_settings


def test_splitter_emits_sentences_as_tokens_arrive():
    sp = SentenceSplitter(min_chars=5, first_clause_chars=0)
    tokens = ["The ser", "ver uses port 8000", ". It start", "s with make serve! Dr. Smith", " says e.g. ", "3.5 is fine. Bye"]
    out = []
    for t in tokens:
        out.append(sp.push(t))
    assert out[0] == [] and out[1] == []
    assert out[2] == ["The server uses port 8000."]  # emitted before the next sentence is complete
    assert out[3] == ["It starts with make serve!"]
    assert out[5] == ["Dr. Smith says e.g. 3.5 is fine."]  # abbreviations and decimals do not split
    assert sp.flush() == ["Bye"] and sp.flush() == []


def test_splitter_first_piece_is_a_few_words():
    sp = SentenceSplitter(first_clause_chars=12, first_words=4)
    out = [sp.push(t) for t in ["The", " server", " listens", " on", " port", " 8000", " by", " default.", " Then", " more."]]
    assert out[4] == ["The server listens on"]  # the TTS starts after four words
    assert out[8] == ["port 8000 by default."]  # then whole sentences
    assert sp.flush() == ["Then more."]


def test_splitter_first_piece_may_end_at_a_comma():
    sp = SentenceSplitter(min_chars=5, first_clause_chars=20)
    assert sp.push("Sure, the server") == []  # too short to cut at this comma
    assert sp.push(" listens on port 8000, and you can") == ["Sure, the server listens on port 8000,"]
    assert sp.push(" change it, if you like. Next") == ["and you can change it, if you like."]  # later: sentences only
    sp.reset()
    assert sp.push("Well, I think that this one is long, yes") == ["Well, I think that this one is long,"]


def test_splitter_cuts_run_on_text_and_strips_markdown():
    sp = SentenceSplitter(min_chars=5, max_chars=60)
    out = sp.push("**Well**, " + "this goes on and on, " * 6)
    assert out and all(len(s) <= 60 for s in out) and "*" not in "".join(out)


def test_prompt_keeps_a_fixed_prefix_and_puts_the_turn_last():
    passages = [Passage("server.md", "The server listens on port 8000. Voices live in data.", 0.6)]
    msgs = build_messages("What port?", [("user", "hi"), ("assistant", "Hello!")], passages, True, "PERSONA", "FALLBACK",
                          style={"warmth": 0.9, "energy": 0.1}, emotion={"label": "frustrated", "confidence": 0.8}, max_notes=1)
    # The system message is the persona alone, on every turn (its KV cache is reused); what changes
    # per turn (notes, emotion, style) goes into the last message, next to the question.
    assert msgs[0] == {"role": "system", "content": "PERSONA"}
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    last = msgs[-1]["content"]
    assert "[server.md] The server listens on port 8000." in last and "Voices live" not in last  # only the sentences that match
    assert "frustrated" in last and "warm and caring" in last and last.endswith("Question: What port?")
    fallback = build_messages("Tell me a joke", [], passages, False, "PERSONA", "FALLBACK")
    assert fallback[0]["content"] == "PERSONA" and fallback[-1]["content"] == "FALLBACK\n\nTell me a joke"
    assert style_instructions({"warmth": 0.5}) == ""  # neutral sliders add nothing


def test_fact_questions_small_talk_and_grounding():
    from echoforge.agent.llm import asks_for_fact, extractive_answer, ungrounded

    for q in ("Who founded the lighthouse in the harbour?", "What port does the server use?", "Does any audio leave my machine?",
              "so how tall is mount everest", "tell me about the voices"):
        assert asks_for_fact(q), q
    for q in ("Hello there!", "How are you today?", "Tell me a joke about penguins.", "Tell me a long story about a dragon.", "Thanks!"):
        assert not asks_for_fact(q), q
    known = "What port does the server use? The server listens on 127.0.0.1 at port 8000."
    assert ungrounded("It listens on port 3000.", known) == ["3000"]
    assert ungrounded("The server listens on port 8000.", known) == []
    assert ungrounded("It was founded by Captain James Cook in 1789.", "who founded the lighthouse", names=True) == [
        "1789", "Captain", "James", "Cook"]  # fmt: skip
    passages = [Passage("running.md", "Starting the server: Run make serve. By default the server listens on port 8000.", 0.5)]
    assert extractive_answer("what port does the server use", passages) == "By default the server listens on port 8000."


@pytest.mark.integration
def test_embedded_llm_streams_and_stops_on_event(models):
    llm = models.llm
    msgs = [{"role": "user", "content": "Tell me a long story about a dragon and a knight."}]
    stop = threading.Event()
    pieces = []
    t0 = time.perf_counter()
    for piece in llm.stream(msgs, stop, max_tokens=200, temperature=0.0):
        pieces.append(piece)
        if len(pieces) == 5:
            stop.set()
    assert 5 <= len(pieces) <= 6  # at most the piece already in flight
    assert time.perf_counter() - t0 < 20
    assert not [t for t in threading.enumerate() if t.name == "llm-generate" and t.is_alive()]
    # A full (short) answer streams in several pieces.
    full = list(llm.stream([{"role": "user", "content": "Say hello."}], threading.Event(), 16, 0.0))
    assert len(full) >= 2 and "".join(full).strip()


def test_agent_settings_from_settings_section_and_errors():
    settings = load_settings(agent={"llm_base_url": "http://localhost:11434/v1", "llm_api_key": "sk-secret", "silence_ms": 800})
    cfg = agent_settings(settings)
    # The VAD keys live in agent.turn; the old flat ones (agent.silence_ms) still work.
    assert cfg.turn.silence_ms == 800 and cfg.llm_api_key.get_secret_value() == "sk-secret"
    assert agent_settings(load_settings(agent={"turn": {"silence_ms": 700}})).turn.silence_ms == 700
    assert agent_settings(None, vad_threshold=0.4).turn.threshold == 0.4
    assert "sk-secret" not in repr(cfg)
    assert settings.redacted()["agent"]["llm_api_key"] == "***"
    with pytest.raises(ConfigError, match=r"agent\.turn\.silence_ms"):
        agent_settings(load_settings(agent={"silence_ms": 5}))
    with pytest.raises(ConfigError, match=r"agent\.turn\.silence_ms"):
        agent_settings(load_settings(agent={"turn": {"silence_ms": 5}}))
    with pytest.raises(ConfigError, match="agent.nonsense"):
        agent_settings(load_settings(agent={"nonsense": 1}))
    with pytest.raises(ConfigError, match="agent.turn.nonsense"):
        agent_settings(load_settings(agent={"turn": {"nonsense": 1}}))
    with pytest.raises(ConfigError, match="both set"):
        agent_settings(load_settings(agent={"silence_ms": 600, "turn": {"silence_ms": 700}}))
    with pytest.raises(ConfigError, match="interrupt_threshold must be >= turn.threshold"):
        agent_settings(None, vad_threshold=0.9, vad_interrupt_threshold=0.5)
    assert AgentSettings().resolved_index_dir("data").as_posix() == "data/kb_index"
