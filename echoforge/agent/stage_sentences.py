"""The sentence stage: :class:`SentenceProcessor` turns streamed LLM text into checked pieces for the TTS.

Owns the split (a few first words, then whole sentences), the check of each piece against what the
model was given before it is spoken (the notes' sentence replaces an ungrounded one) and the reply's
length limit; it stops generation upstream when a reply is complete. The splitter itself lives in
:mod:`echoforge.agent.sentences`, the grounding checks in :mod:`echoforge.agent.grounding`.
"""

from __future__ import annotations

import logging
import re

from echoforge.agent.frames import (
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMStopFrame,
    LLMTextFrame,
    TTSTextFrame,
)
from echoforge.agent.grounding import (
    DONT_KNOW,
    answers,
    strip_labels,
    support,
    ungrounded,
)
from echoforge.agent.processors import UP, Direction, FrameProcessor
from echoforge.agent.sentences import SentenceSplitter

log = logging.getLogger("echoforge.agent")


class SentenceProcessor(FrameProcessor):
    """Streamed LLM text → short pieces for the TTS, each checked before it is spoken.

    * The first piece is a few words (the first audio starts early), then whole sentences; a reply
      checked against the notes (``known``) goes out in whole sentences, and one decided before it
      is spoken (``verbatim``: a quote, a decline, small talk) is not checked.
    * A piece with a number (or, for answers from notes, a name) that the model was not given, or an
      answer from notes made mostly of other words than theirs, is not spoken: the notes' own
      sentence replaces it, and generation stops.
    * After ``max_sentences`` sentences the reply is complete: generation stops (the persona's
      length limit). A reply the token budget cut mid-sentence loses its unfinished tail.
    """

    def __init__(self, max_sentences: int = 2, first_words: int = 4) -> None:
        super().__init__()
        self._fast = SentenceSplitter(first_clause_chars=12, first_words=first_words)
        # Replies checked against what the model was given: a sentence is checked whole before any
        # of it is spoken (no first words of an invented answer, then the notes' sentence).
        self._whole = SentenceSplitter(first_clause_chars=0, first_words=0)
        self.splitter = self._fast
        self.max_sentences = max_sentences
        self.index = 0
        self._start: LLMFullResponseStartFrame | None = None
        self._sentences = 0
        self._done = False
        self._first = ""  # the reply's first sentence so far
        self.rejected: list[str] = []  # pieces not spoken because they were not grounded

    async def process_frame(self, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, InterruptionFrame | LLMFullResponseStartFrame):
            self.splitter.reset()
            self.index = self._sentences = 0
            self._done = False
            self._first = ""
            self._start = frame if isinstance(frame, LLMFullResponseStartFrame) else None
            checked = self._start is not None and self._start.known and not self._start.verbatim
            self.splitter = self._whole if checked else self._fast
            self.splitter.reset()
        if isinstance(frame, LLMFullResponseEndFrame) and not self._done:
            # The last (maybe unpunctuated) sentence goes out before the end marker, unless the token
            # budget cut it mid-sentence: then the reply ends at its last whole sentence.
            for piece in self.splitter.flush():
                if frame.cut and not _ends_sentence(piece) and self.index:
                    log.info("dropped the unfinished end of a reply cut by the token budget: %r", piece)
                    continue
                await self._accept(piece if _ends_sentence(piece) else piece + ".", frame.turn_id)
        await self.push_frame(frame, direction)
        if isinstance(frame, LLMTextFrame) and not self._done:
            verbatim = self._start is not None and self._start.verbatim
            # Decided text arrives whole: fed word by word, its first piece is a few words (the
            # first audio starts early), exactly as when a model streams it.
            for text in re.findall(r"\S+\s*", frame.text) if verbatim else [frame.text]:
                for piece in self.splitter.push(text):
                    if self._done:
                        return
                    await self._accept(piece, frame.turn_id)

    async def _accept(self, piece: str, turn_id: int) -> None:
        piece = strip_labels(piece)
        if not piece:
            return
        start = self._start
        if start is not None and start.known and not start.verbatim:
            bad = ungrounded(piece, start.known, names=start.strict)
            if start.strict and support(piece, start.known) < 0.5:
                bad.append("words not from the notes")
            if start.strict and start.grounded_answer and not self._sentences and _ends_sentence(piece):
                # The first sentence must carry something of the notes' answer beyond the question's words.
                first = self._first + " " + piece
                if not answers(first, start.grounded_answer, start.question):
                    bad.append("no answer from the notes")
            if bad:
                self.rejected.append(piece)
                log.warning("not spoken (not in the notes: %s): %r", ", ".join(bad), piece)
                replacement = start.grounded_answer if start.strict and start.grounded_answer else DONT_KNOW
                await self._emit(replacement, turn_id)
                await self._finish(turn_id, "ungrounded")
                return
        await self._emit(piece, turn_id)
        if not self._sentences:
            self._first += " " + piece
        if _ends_sentence(piece):
            self._sentences += 1
            if self._sentences >= self.max_sentences:
                await self._finish(turn_id, "length")

    async def _finish(self, turn_id: int, reason: str) -> None:
        self._done = True
        await self.push_frame(LLMStopFrame(turn_id=turn_id, reason=reason), UP)

    async def _emit(self, sentence: str, turn_id: int) -> None:
        await self.push_frame(TTSTextFrame(text=sentence, turn_id=turn_id, index=self.index))
        self.index += 1


def _ends_sentence(piece: str) -> bool:
    return piece.rstrip("\"')] ").endswith((".", "!", "?", "…"))
