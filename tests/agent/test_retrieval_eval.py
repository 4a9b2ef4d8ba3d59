"""Retrieval and truthfulness on the real knowledge_base/ with a labelled question set.

``tests/agent/data/kb_questions.json``: spoken-style questions, each with the file that answers it
(``source``; ``null`` when the knowledge base does not) and a word the answer must contain.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from echoforge.agent.frames import LLMFullResponseEndFrame, LLMStopFrame, TranscriptionFrame, TTSTextFrame
from echoforge.agent.llm import DONT_KNOW
from echoforge.agent.rag import DEFAULT_THRESHOLD, KnowledgeBase, calibrate_threshold

ROOT = Path(__file__).resolve().parents[2]
LABELLED = json.loads((ROOT / "tests/agent/data/kb_questions.json").read_text())["questions"]
# Near misses are on topic: retrieval must find their note; only the answer check can decline them.
QUESTIONS = [q for q in LABELLED if not q.get("near_miss")]
NEAR_MISSES = [q for q in LABELLED if q.get("near_miss")]


@pytest.fixture(scope="module")
def project_kb(models, tmp_path_factory):
    kb = KnowledgeBase(ROOT / "knowledge_base", tmp_path_factory.mktemp("project_kb"), models.kb.embedder)
    kb.build()
    return kb


def test_labelled_set_is_big_enough():
    answerable = [q for q in QUESTIONS if q["source"]]
    assert len(answerable) >= 20 and len(QUESTIONS) - len(answerable) >= 8
    assert all((ROOT / "knowledge_base" / q["source"]).is_file() for q in answerable)
    assert len(NEAR_MISSES) >= 10 and all(q["source"] is None for q in NEAR_MISSES)


@pytest.mark.integration
async def test_answers_and_declines_on_the_labelled_set(project_kb):
    # The answer decision (retrieval with the real embedder, answer types, declines) on every
    # labelled question, near misses included; the notes are quoted, so no LLM is involved.
    from benchmarks.agent_grounding import evaluate

    result = await evaluate(project_kb, LABELLED)
    assert result["answer_recall"] >= 0.95, result["wrong_answers"]  # 24/25 (issue 24: ≥ 95 %)
    assert result["decline_rate"] >= 0.9, result["invented"]
    assert result["near_miss_decline_rate"] >= 0.9, result["invented"]
    assert result["decline_precision"] >= 0.9, result["wrong_declines"]
    # No invented fact: an unanswerable question never gets a note's sentence as its answer.
    assert not result["invented"], result["invented"]


@pytest.mark.integration
def test_recall_at_3_and_the_calibrated_threshold(project_kb):
    result = calibrate_threshold(project_kb, QUESTIONS, top_k=3)
    misses = [r for r in result["rows"] if r["source"] and not r["hit"]]
    assert result["recall_at_k"] >= 0.9, misses
    # The shipped default still separates answerable from unanswerable questions here (re-run
    # `echoforge kb calibrate` after changing knowledge_base/ and update DEFAULT_THRESHOLD).
    rows = result["rows"]
    tpr = sum(r["best"] >= DEFAULT_THRESHOLD for r in rows if r["source"]) / sum(1 for r in rows if r["source"])
    tnr = sum(r["best"] < DEFAULT_THRESHOLD for r in rows if not r["source"]) / sum(1 for r in rows if not r["source"])
    assert tpr >= 0.9 and tnr >= 0.9, (tpr, tnr, rows)


@pytest.mark.integration
def test_privacy_question_finds_the_privacy_file(project_kb):
    r = project_kb.query("Does any audio leave my machine?", 3)
    assert r.relevant and r.passages[0].source == "what-is-echoforge.md", r.passages
    assert "no audio" in r.passages[0].text and r.passages[0].lexical > 0 and r.passages[0].dense > 0


async def _reply(models, kb, question: str, answer_style: str = "generate") -> tuple[str, list]:
    """The real LLM + sentence stages on one transcript: the pieces that would be spoken."""
    from echoforge.agent.pipeline import Conversation, LLMProcessor, Pipeline, SentenceProcessor

    cfg = models.settings.model_copy(update={"answer_style": answer_style})
    spoken: list[str] = []
    upstream: list = []
    ended = asyncio.Event()

    async def observe(frame, _direction) -> None:
        if isinstance(frame, TTSTextFrame):
            spoken.append(frame.text)
        elif isinstance(frame, LLMFullResponseEndFrame):
            ended.set()
        elif isinstance(frame, LLMStopFrame):
            upstream.append(frame)

    llm = LLMProcessor(models.llm, Conversation(), cfg, kb)
    pipeline = Pipeline([llm, SentenceProcessor(cfg.reply_max_sentences)], observe)
    await pipeline.start()
    try:
        await pipeline.queue_frame(TranscriptionFrame(text=question))
        await asyncio.wait_for(ended.wait(), 60)
    finally:
        await pipeline.stop()
    return " ".join(spoken), upstream


@pytest.mark.integration
@pytest.mark.parametrize(
    "item", [q for q in QUESTIONS if q["q"] in (
        "what port does the server use", "does any audio leave my machine", "which language model runs by default",
        "can piper clone my voice",
    )], ids=lambda q: q["q"],
)  # fmt: skip
async def test_generated_answers_contain_the_fact_and_end_at_a_sentence(models, project_kb, item):
    # The embedded model writes the answer; pieces with invented numbers or names, or without the
    # notes' answer, are replaced by the notes' sentence. (Not caught: notes' own words recombined
    # into a false statement — "is there a British voice" → "a British male, orion" — which is why
    # answer_style auto quotes the notes with this model.)
    reply, _ = await _reply(models, project_kb, item["q"] + "?")
    assert item["fact"].lower() in reply.lower(), reply
    assert reply.rstrip().endswith((".", "!", "?")), reply
    assert "3000" not in reply


@pytest.mark.integration
@pytest.mark.parametrize("question", ["Who founded the lighthouse in the harbour?", "What is the capital of Australia?"])
async def test_unanswerable_facts_get_i_dont_know(models, project_kb, question):
    reply, _ = await _reply(models, project_kb, question)
    assert reply == DONT_KNOW


@pytest.mark.integration
async def test_quoted_answers_contain_the_fact(models, project_kb):
    # The default with the embedded model (answer_style auto → quote): the notes' best sentence.
    answerable = [q for q in QUESTIONS if q["source"]]
    replies = [(q, (await _reply(models, project_kb, q["q"] + "?", "auto"))[0]) for q in answerable]
    wrong = [(q["q"], q["fact"], r) for q, r in replies if q["fact"].lower() not in r.lower()]
    assert len(wrong) <= len(answerable) // 10, wrong


@pytest.mark.integration
def test_whisper_spells_the_notes_names_from_their_glossary(models, say, project_kb):
    # Heard without a glossary: "Can I use Alama as …", "… does Echo Fort ship?" — retrieval then
    # has nothing to match. With the notes' names as Whisper's prompt it writes them as the notes do.
    glossary = project_kb.glossary()
    assert {"EchoForge", "Ollama", "Piper", "SmolLM2"} <= set(glossary) and len(glossary) <= 20
    stt, saved = models.stt, models.stt.prompt
    try:
        stt.set_glossary(glossary)
        assert stt.prompt.startswith("Glossary: EchoForge")
        assert "Ollama" in stt.transcribe(say("Can I use Ollama as the language model?")).text
        assert "EchoForge" in stt.transcribe(say("How many voices does EchoForge ship?")).text
    finally:
        stt.prompt = saved
