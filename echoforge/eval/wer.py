"""Word error rate with the text normalisation speech evaluations use (jiwer under the hood)."""

from __future__ import annotations

import re

from echoforge.text import normalize_text

_PUNCT_RE = re.compile(r"[^\w\s']")
_DOTTED_RE = re.compile(r"\b(?:[A-Za-z]\.){2,}")  # U.S.A. -> USA (Whisper writes initialisms without dots)


def normalize_for_wer(text: str) -> str:
    """Lower-case, numbers written as words, punctuation dropped, whitespace collapsed."""
    text = _DOTTED_RE.sub(lambda m: m.group(0).replace(".", ""), text)
    text = normalize_text(text).lower().replace("-", " ")
    return " ".join(_PUNCT_RE.sub(" ", text).split())


def wer(reference: str, hypothesis: str) -> float:
    """WER of ``hypothesis`` against ``reference`` after :func:`normalize_for_wer` (0 = perfect)."""
    import jiwer

    ref, hyp = normalize_for_wer(reference), normalize_for_wer(hypothesis)
    if not ref:
        raise ValueError("reference text is empty after normalisation")
    return float(jiwer.wer(ref, hyp or "<empty>"))
