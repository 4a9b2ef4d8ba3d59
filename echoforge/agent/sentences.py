"""Incremental sentence splitting for streamed LLM text.

The TTS should start on the first sentence while the LLM is still writing the second, so text is
cut as soon as a sentence is certainly complete: end punctuation followed by whitespace. Common
abbreviations ("e.g.", "Dr.") and decimals ("3.5") do not end a sentence. A very long clause is
cut at a comma or space so that the first audio is never held back by a run-on sentence, and the
reply's first piece is short: it ends at a comma once it is long enough, or after
``first_words`` words — the TTS starts on a few words while the LLM writes the rest.
"""

from __future__ import annotations

import re

from echoforge.text import ends_sentence

_END = re.compile(r"([.!?…]+)([\"'”’)\]]*)(\s+)")
_MARKUP = re.compile(r"[*_`#>]+")
_SOURCE_TAG = re.compile(r"\[[^\]\s]+\.(?:md|txt|pdf)\]\s*", re.IGNORECASE)  # "[notes.md]" copied from the prompt


class SentenceSplitter:
    """Feed text pieces with :meth:`push`; get complete sentences back; :meth:`flush` the rest.

    Args:
        min_chars: a sentence shorter than this is joined with the next one (avoids tiny TTS calls).
        max_chars: a sentence longer than this is cut at the last comma (or space) before it.
        first_clause_chars: the reply's *first* piece may end at a comma once it is this long, so
            the first audio starts a clause earlier (0 disables).
        first_words: the reply's first piece ends after this many words at the latest, when no
            sentence end or comma came first (0 disables).
    """

    def __init__(
        self, min_chars: int = 12, max_chars: int = 220, first_clause_chars: int = 30, first_words: int = 0
    ) -> None:
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.first_clause_chars = first_clause_chars
        self.first_words = first_words
        self._buf = ""
        self._emitted = 0

    def reset(self) -> None:
        self._buf = ""
        self._emitted = 0

    def push(self, text: str) -> list[str]:
        """Add streamed text; return the sentences it completed."""
        self._buf += text
        out: list[str] = []
        start = 0
        for m in _END.finditer(self._buf):
            end = m.end(2)
            candidate = self._buf[start:end].strip()
            if not ends_sentence(self._buf, m):  # the one rule (echoforge.text): "Dr.", "e.g.", initials
                continue
            if len(candidate) < self.min_chars:
                continue
            out.append(candidate)
            start = m.end()
        self._buf = self._buf[start:]
        while len(self._buf) > self.max_chars:
            cut = self._buf.rfind(",", 0, self.max_chars)
            if cut < self.min_chars:
                cut = self._buf.rfind(" ", 0, self.max_chars)
            if cut < self.min_chars:
                cut = self.max_chars - 1
            out.append(self._buf[: cut + 1].strip())
            self._buf = self._buf[cut + 1 :]
        if not out and not self._emitted and self.first_clause_chars:
            m = re.search(r"[,;:]\s", self._buf[self.first_clause_chars :])
            if m:
                cut = self.first_clause_chars + m.start() + 1
                out.append(self._buf[:cut].strip())
                self._buf = self._buf[cut:].lstrip()
        if not out and not self._emitted and self.first_words:
            # A word is complete once whitespace follows it: cut after the first_words-th one.
            words = list(re.finditer(r"\S+\s+", self._buf))
            if len(words) >= self.first_words and len(self._buf[: words[self.first_words - 1].end()].strip()) >= self.min_chars:
                cut = words[self.first_words - 1].end()
                out.append(self._buf[:cut].strip())
                self._buf = self._buf[cut:]
        out = [clean_for_speech(s) for s in out if clean_for_speech(s)]
        self._emitted += len(out)
        return out

    def flush(self) -> list[str]:
        """Whatever is left (the reply's last sentence, possibly without punctuation)."""
        rest = clean_for_speech(self._buf)
        self._buf = ""
        self._emitted += bool(rest)
        return [rest] if rest else []


def clean_for_speech(text: str) -> str:
    """Strip markdown symbols and copied source tags an LLM may emit, and collapse whitespace."""
    return " ".join(_MARKUP.sub(" ", _SOURCE_TAG.sub("", text)).split())
