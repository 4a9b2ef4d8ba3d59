"""Map recognized words with times onto the input text's words.

An ASR pass (e.g. faster-whisper with ``word_timestamps=True``) over generated
audio gives ``(word, start_s, end_s)`` that may differ from the input text
(numbers spelled out, words merged or dropped). An edit-distance alignment
(difflib opcodes over normalized tokens) places each input word: matched and
substituted words take the recognized times; input words with no counterpart
get times interpolated between their placed neighbours, and input spans
heard as a different number of words share the recognized span; both are
flagged ``interpolated=True``. Every input word comes back, in input order.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

_NON_WORD = re.compile(r"[^\w']+")
_MIN_WORD_S = 0.05  # a gap narrower than this per missing word borrows time from the word before


def _norm(word: str) -> str:
    return _NON_WORD.sub("", word.lower())


def align_words(text: str, recognized: Sequence[tuple[str, float, float]], duration_s: float) -> list[dict]:
    words = text.split()
    times: list[tuple[float, float] | None] = [None] * len(words)
    ops = difflib.SequenceMatcher(None, [_norm(w) for w in words], [_norm(r[0]) for r in recognized], autojunk=False)
    for tag, i1, i2, j1, j2 in ops.get_opcodes():
        if tag == "equal":
            for k in range(i2 - i1):
                times[i1 + k] = recognized[j1 + k][1:3]
        elif tag == "replace" and i2 - i1 == j2 - j1:
            for k in range(i2 - i1):  # word-for-word substitutions keep the recognized times
                times[i1 + k] = recognized[j1 + k][1:3]
        elif tag == "replace":
            # "21" heard as "twenty one": spread the recognized span over the input span, flagged.
            _spread(times, words, i1, i2, recognized[j1][1], recognized[j2 - 1][2], flag=True)
    _fill_gaps(times, words, duration_s)
    return [
        {"word": word, "start_s": round(t[0], 3), "end_s": round(t[1], 3), "interpolated": t[2]}
        for word, t in zip(words, times, strict=True)
    ]


def _spread(times: list, words: Sequence[str], i1: int, i2: int, start: float, end: float, flag: bool = False) -> None:
    weights = [max(1, len(words[i])) for i in range(i1, i2)]
    total, t = sum(weights), start
    for i, w in zip(range(i1, i2), weights, strict=True):
        step = (end - start) * w / total
        times[i] = (t, t + step, flag) if flag else (t, t + step)
        t += step


def _fill_gaps(times: list, words: Sequence[str], duration_s: float) -> None:
    i = 0
    while i < len(times):
        if times[i] is not None:
            if len(times[i]) == 2:
                times[i] = (*times[i], False)
            i += 1
            continue
        j = i
        while j < len(times) and times[j] is None:
            j += 1
        start = times[i - 1][1] if i else 0.0
        end = times[j][0] if j < len(times) else max(duration_s, start)
        if i and end - start < _MIN_WORD_S * (j - i):
            # No room between the neighbours (a word said together with the one before, e.g.
            # espeak-ng's "in the" as one unit): share the previous word's span with it.
            prev_start, _prev_end, prev_flag = times[i - 1]
            _spread(times, words, i - 1, j, prev_start, max(prev_start, end), flag=True)
            times[i - 1] = (*times[i - 1][:2], prev_flag)
        else:
            _spread(times, words, i, j, start, max(start, end), flag=True)
        i = j
