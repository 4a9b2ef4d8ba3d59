"""The conversation: what was said, as it was heard, shared by every stage that needs it.

One object with one owner (the :class:`~echoforge.agent.pipeline.VoiceAgent`): the LLM stage adds
the user's turns, the output stage the assistant's (only the part that was heard). Retrieval, the
don't-know decision and the prompt read it through :meth:`Conversation.contextual_query` and
:meth:`Conversation.history`; the TTS through :meth:`Conversation.tts_context`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np

from echoforge.agent.vad import SAMPLE_RATE
from echoforge.engines.base import Segment

# Words that point back at something said before ("she", "it", "there"); existential "there"
# ("is there a…", "there are…") does not.
_REFERS_BACK = re.compile(r"\b(she|he|her|him|his|hers|it|its|they|them|their|theirs|there|that one|this one)\b")
_EXISTENTIAL = re.compile(r"\b(is|are|was|were|will|would|could|can)\s+there\b|\bthere\s+(is|are|was|were|'s|will)\b|^there\b")


# A noun phrase that a later pronoun in the same question can point at: a determiner and a word
# ("the voice agent … interrupt it"), or a name (a capitalised word that does not start the
# sentence: "Where does Echo Forge read its settings").
_DETERMINER_NP = re.compile(r"\b(the|this|that|my|your|our|a|an)\s+[a-z]")
_NAME = re.compile(r"(?<!^)(?<![.?!]\s)\b(?!I\b)[A-Z][a-z]")


def refers_back(text: str) -> bool:
    """Whether ``text`` uses a pronoun or "there" that needs an earlier turn to be understood.

    A pronoun whose antecedent is in the question itself ("What does the voice agent do when I
    interrupt it?", "Where does Echo Forge read its settings from?") does not; "there" and
    "… of it" always do ("How do I get there?", "What is the price of it?").
    """
    flat = " ".join(re.sub(r"[^\w' ]+", " ", text).split())
    # Existential "there" blanked out in place, so positions in ``t`` are positions in ``flat``.
    t = _EXISTENTIAL.sub(lambda m: " " * len(m.group()), flat.lower())
    match = _REFERS_BACK.search(t)
    if not match:
        return False
    before = t[: match.start()]
    if match.group(1) == "there" or before.endswith("of "):
        return True
    return not (_DETERMINER_NP.search(before) or _NAME.search(flat[: match.start()]))


@dataclass
class Turn:
    """One turn of the conversation as it was heard (assistant turns: only the spoken part)."""

    role: str  # "user" | "assistant"
    text: str
    audio: np.ndarray | None = None
    sample_rate: int = SAMPLE_RATE
    interrupted: bool = False
    time: float = field(default_factory=time.time)


class Conversation:
    """The history shared by the LLM (text) and the TTS (text + audio context segments)."""

    def __init__(self, agent_speaker: int = 0, user_speaker: int = 1) -> None:
        self.turns: list[Turn] = []
        self.agent_speaker = agent_speaker
        self.user_speaker = user_speaker

    def add(self, turn: Turn) -> None:
        self.turns.append(turn)

    def history(self, max_turns: int) -> list[tuple[str, str]]:
        """The last ``max_turns`` turns as ``(role, text)`` for the LLM."""
        return [(t.role, t.text) for t in self.turns[-max_turns:]] if max_turns else []

    def tts_context(self, max_turns: int, sample_rate: int) -> list[Segment]:
        """The last turns as engine :class:`Segment`s (audio resampled to the engine's rate)."""
        from echoforge.audio import resample

        segments = []
        for t in self.turns[-max_turns:] if max_turns else []:
            if not t.text:
                continue
            audio = None
            if t.audio is not None and t.audio.size:
                audio = resample(t.audio, t.sample_rate, sample_rate)
            speaker = self.agent_speaker if t.role == "assistant" else self.user_speaker
            segments.append(Segment(speaker=speaker, text=t.text, audio=audio, sample_rate=sample_rate))
        return segments

    def contextual_query(self, text: str, turns: int = 4) -> str:
        """``text`` for retrieval and the don't-know decision, resolved against the recent turns.

        A follow-up that refers back ("how much does it cost?", "when does she work?", "how do I
        get there?") gets the last exchanges (questions and answers) appended, so that it
        retrieves the thing just discussed; anything else is returned unchanged. Declines are
        skipped: "I don't know" names nothing.

        Args:
            text: the new utterance (not yet added to the conversation).
            turns: how many earlier turns to take the words from.
        """
        if not refers_back(text):
            return text
        from echoforge.agent.grounding import is_decline

        earlier = [t.text for t in reversed(self.turns) if t.text and not is_decline(t.text)][:turns]
        return " ".join([text, *reversed(earlier)]) if earlier else text
