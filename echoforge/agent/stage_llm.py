"""The LLM stage: :class:`LLMProcessor` answers each transcript (retrieval → decision → reply).

Owns the per-turn glue between the notes and the model: retrieval with the conversation's
context, the answer decision (:class:`Grounding`: quote the notes' sentence, decline honestly,
say "I don't know", or let the LLM speak), small-talk replies in the persona's name, the prefill
at a pause, and the streamed reply with its stop event. The grounding rules themselves live in
:mod:`echoforge.agent.grounding`; the model wrappers and prompt building in
:mod:`echoforge.agent.llm`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from echoforge.agent.config import AgentSettings
from echoforge.agent.conversation import Conversation, Turn
from echoforge.agent.frames import (
    Frame,
    InterimTranscriptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMStopFrame,
    LLMTextFrame,
    RetrievalFrame,
    TranscriptionFrame,
)
from echoforge.agent.grounding import (
    DONT_KNOW,
    answer_type,
    asks_for_fact,
    choose_answer,
    decline,
    ranked_sentences,
    small_talk_reply,
)
from echoforge.agent.llm import build_messages
from echoforge.agent.processors import DOWN, Direction, FrameProcessor, iterate_in_thread

log = logging.getLogger("echoforge.agent")


@dataclass
class Grounding:
    """What the notes say about one utterance, and what the agent may answer from them.

    ``query`` is the utterance resolved against the recent turns (retrieval used it); ``answer``
    the notes' sentence that answers the question (its type included); ``decline`` the honest
    "my notes don't say" when the notes are on topic but hold no such answer.
    """

    text: str
    query: str
    passages: list[Any]
    relevant: bool
    answer: str = ""
    decline: str = ""


def _persona_names(persona: str) -> tuple[str, str]:
    """The persona's name and what it knows about, for small-talk replies ("You are Echo, … of EchoForge")."""
    import re

    name = re.search(r"\bYou are (\w+)", persona)
    topic = re.search(r"\bassistant of ([\w-]+)", persona)
    return (name.group(1) if name else "your assistant"), (topic.group(1) if topic else "the notes I was given")


class LLMProcessor(FrameProcessor):
    """Retrieval + emotion + prompt + streamed LLM reply for each non-empty transcript."""

    def __init__(
        self,
        llm: Any,
        conversation: Conversation,
        settings: AgentSettings,
        kb: Any = None,
        emotion_detector: Callable[[np.ndarray, int], dict | None] | None = None,
        style: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        super().__init__()
        self.llm = llm
        self.conversation = conversation
        self.settings = settings
        self.kb = kb
        self.emotion_detector = emotion_detector
        self.style = style or dict
        self.turn_id = 0
        self.cancelled = 0  # replies cut short by an interruption
        self.generating = False
        self._stop: threading.Event | None = None
        self._speculation: Grounding | None = None  # the decision for the words at the last pause
        # A gate for protocol adapters (the Realtime API's create_response: false): whether this
        # transcript gets a reply now. None: every non-empty one does.
        self.respond: Callable[[TranscriptionFrame], bool] | None = None

    async def process_frame(self, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, TranscriptionFrame):
            await self.push_frame(frame, direction)
            if frame.text.strip() and (self.respond is None or self.respond(frame)):
                await self._respond(frame)
            return
        if isinstance(frame, InterimTranscriptionFrame):
            await self._prepare(frame.text)
            return
        if isinstance(frame, LLMStopFrame) and frame.turn_id == self.turn_id and self._stop is not None:
            self._stop.set()  # the reply has what it needs: stop generating (the text frames already out stay)
        await self.push_frame(frame, direction)

    async def _retrieve(self, text: str) -> Grounding:
        """Retrieval and the answer decision for ``text`` (with the recent turns when it refers back).

        Reused when the words are those of a pause's speculation.
        """
        if self._speculation is not None and self._speculation.text == text:
            return self._speculation
        s = self.settings
        query = self.conversation.contextual_query(text)
        passages, relevant = [], False
        if self.kb is not None:
            retrieval = await asyncio.to_thread(self.kb.query, query, s.top_k)
            relevant = retrieval.relevant
            passages = [p for p in retrieval.passages if p.score >= s.relevance_threshold] if relevant else []
        relevant = relevant and bool(passages)
        grounding = Grounding(text, query, passages, relevant)
        if relevant:
            rows = await asyncio.to_thread(ranked_sentences, query, passages, 3, self.kb)
            ranked, contexts = [r[1] for r in rows], [r[0] for r in rows]
            kind = answer_type(text) if asks_for_fact(text) else None
            # Typed questions ("how much…", "who…") must be answered by a sentence of that type about
            # the thing asked; any other question keeps the best sentence.
            chosen = choose_answer(text, ranked, kind, contexts) if kind is not None else (ranked[0] if ranked else None)
            grounding.answer = chosen or ""
            if kind is not None and chosen is None:
                # The notes are about the thing asked, but none of their sentences gives what was
                # asked for (a phone number, a price, a name…): say so, and what they do say.
                grounding.decline = decline(text, ranked[0] if ranked else None)
        return grounding

    async def _prepare(self, text: str) -> None:
        """At a pause: retrieve and evaluate the prompt for the words so far, before the turn ends.

        If the user says nothing more (the usual case: the VAD is only waiting out its silence), the
        reply then starts from a prompt already in the LLM's KV cache.
        """
        prefill = getattr(self.llm, "prefill", None)
        if not text.strip() or self.generating or small_talk_reply(text):
            return
        s = self.settings
        g = await self._retrieve(text)
        self._speculation = g
        if prefill is None or g.decline or (not g.relevant and asks_for_fact(g.query)) or (g.relevant and self._quotes()):
            return
        history = self.conversation.history(s.history_turns)
        messages = build_messages(text, history, g.passages, g.relevant, s.persona, s.fallback_persona, self.style(), None, kb=self.kb)
        await asyncio.to_thread(prefill, messages)

    def _quotes(self) -> bool:
        """Whether answers from notes are quoted (not generated): see ``agent.answer_style``."""
        style = self.settings.answer_style
        return style == "quote" or (style == "auto" and getattr(self.llm, "embedded", False))

    async def _say(self, turn_id: int, text: str) -> None:
        await self.push_frame(LLMTextFrame(text=text, turn_id=turn_id))
        await self.push_frame(LLMFullResponseEndFrame(turn_id=turn_id, text=text))

    async def _respond(self, frame: TranscriptionFrame) -> None:
        s = self.settings
        history = self.conversation.history(s.history_turns)
        chat = small_talk_reply(frame.text, *_persona_names(s.persona))
        g = Grounding(frame.text, frame.text, [], False) if chat else await self._retrieve(frame.text)
        self.conversation.add(Turn("user", frame.text, frame.audio, frame.sample_rate))
        self._speculation = None
        emotion = None
        if self.emotion_detector is not None and frame.audio is not None and not chat:
            with contextlib.suppress(Exception):  # analysis is optional: never let it break a turn
                emotion = await asyncio.to_thread(self.emotion_detector, frame.audio, frame.sample_rate)
        await self.push_frame(
            RetrievalFrame(query=g.query, passages=g.passages, fallback=not g.relevant, emotion=emotion), DOWN
        )
        self.turn_id += 1
        turn_id = self.turn_id
        sources = list(dict.fromkeys(p.source for p in g.passages)) if not g.decline else []
        known = " ".join([frame.text, *(t for _, t in history), *(p.text for p in g.passages)])
        if sources:
            log.info("turn %d answers from %s", turn_id, ", ".join(sources))
        if chat:
            decided = chat  # greetings, thanks, goodbye, "who are you", "what can you do": the persona answers
        elif g.decline:
            decided = g.decline
        elif not g.relevant and asks_for_fact(g.query):
            decided = DONT_KNOW  # nothing in the notes and a question of fact: no model can answer that truthfully
        elif g.relevant and g.answer and self._quotes():
            decided = g.answer  # the embedded 135M model paraphrases notes unreliably: their own sentence
        else:
            decided = ""
        await self.push_frame(
            LLMFullResponseStartFrame(
                turn_id=turn_id, question=frame.text, known=known, strict=g.relevant, grounded_answer=g.answer,
                verbatim=bool(decided), sources=sources,
            )
        )  # fmt: skip
        if decided:
            await self._say(turn_id, decided)
            return
        passages, relevant = g.passages, g.relevant
        messages = build_messages(
            frame.text, history, passages, relevant, s.persona, s.fallback_persona, self.style(), emotion, kb=self.kb
        )
        stop = threading.Event()
        self._stop = stop
        text, pieces = "", 0
        self.generating = True
        try:
            async for piece in iterate_in_thread(
                lambda: self.llm.stream(messages, stop, s.llm_max_tokens, s.llm_temperature), stop
            ):
                text += piece
                pieces += 1
                await self.push_frame(LLMTextFrame(text=piece, turn_id=turn_id))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            cut = pieces >= s.llm_max_tokens and not stop.is_set()
            stop.set()
            self._stop = None
            self.generating = False
        await self.push_frame(LLMFullResponseEndFrame(turn_id=turn_id, text=text.strip(), cut=cut))
