"""Captions from word timings: SRT / WebVTT cues and the words a listener heard.

A word is ``{"word": str, "start_s": float, "end_s": float, "interpolated": bool}``
(the shape the captioned-speech API returns). Cues hold at most ``max_lines``
lines of at most ``max_chars`` characters; a cue ends at a sentence end, and
prefers to break a line at a phrase boundary (comma, semicolon, colon, dash).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_CHARS = 42
MAX_LINES = 2
_SENTENCE_END = (".", "!", "?", "…")
_PHRASE_END = (",", ";", ":", "—", "–")

Word = dict[str, Any]


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    lines: tuple[str, ...]


def _lines(words: Sequence[str], max_chars: int) -> list[list[str]]:
    """Greedy line fill; a word longer than a line gets a line of its own."""
    lines: list[list[str]] = []
    for word in words:
        if lines and len(" ".join([*lines[-1], word])) <= max_chars:
            lines[-1].append(word)
        else:
            lines.append([word])
    return lines


def build_cues(words: Sequence[Word], max_chars: int = MAX_CHARS, max_lines: int = MAX_LINES) -> list[Cue]:
    """Group timed words into cues: a cue closes at a sentence end or when it is full.

    When a cue is full, it is cut after the last phrase boundary inside it (if any),
    so a clause is not split across cues when it can be avoided.
    """
    cues: list[Cue] = []
    pending: list[Word] = []

    def fits(group: Sequence[Word]) -> bool:
        return len(_lines([w["word"] for w in group], max_chars)) <= max_lines

    def emit(group: Sequence[Word]) -> None:
        text = [w["word"] for w in group]
        lines = tuple(" ".join(line) for line in _lines(text, max_chars))
        cues.append(Cue(group[0]["start_s"], group[-1]["end_s"], lines))

    for word in words:
        if pending and not fits([*pending, word]):
            cut = max((i + 1 for i, w in enumerate(pending) if w["word"].endswith(_PHRASE_END)), default=len(pending))
            emit(pending[:cut])
            pending = pending[cut:]
        pending.append(word)
        if word["word"].endswith(_SENTENCE_END):
            emit(pending)
            pending = []
    if pending:
        emit(pending)
    return cues


def _stamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(words: Sequence[Word]) -> str:
    blocks = [
        f"{i}\n{_stamp(c.start_s, ',')} --> {_stamp(c.end_s, ',')}\n" + "\n".join(c.lines)
        for i, c in enumerate(build_cues(words), 1)
    ]
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def to_vtt(words: Sequence[Word]) -> str:
    blocks = [f"{_stamp(c.start_s, '.')} --> {_stamp(c.end_s, '.')}\n" + "\n".join(c.lines) for c in build_cues(words)]
    return "WEBVTT\n\n" + "\n\n".join(blocks) + ("\n" if blocks else "")


def words_heard(words: Sequence[Word], played_s: float) -> list[Word]:
    """The words a listener heard once ``played_s`` seconds of audio played.

    A word counts as heard when its middle has played (barge-in truncation).
    """
    return [w for w in words if (w["start_s"] + w["end_s"]) / 2 <= played_s]
