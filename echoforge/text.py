"""A small English text front-end: numbers, symbols and abbreviations -> words; sentence splitting.

CSM reads raw text through a BPE tokenizer and mispronounces "$3.50", "42%" or "Dr." often
enough that spelling them out first is worth it. Plain words pass through unchanged, so
normalising twice is harmless.
"""

from __future__ import annotations

import re

from num2words import num2words

_ABBREVIATIONS = {
    "mr.": "mister", "mrs.": "missus", "ms.": "miz", "dr.": "doctor", "prof.": "professor", "st.": "saint",
    "jr.": "junior", "sr.": "senior", "vs.": "versus", "etc.": "et cetera", "e.g.": "for example",
    "i.e.": "that is", "approx.": "approximately", "no.": "number", "mt.": "mount", "ft.": "feet",
}  # fmt: skip
_SYMBOLS = {"&": " and ", "@": " at ", "+": " plus ", "=": " equals ", "#": " number ", "°": " degrees "}
_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
               "£": ("pound", "pounds", "penny", "pence")}  # fmt: skip

_NUM = r"\d+(?:,\d{3})*(?:\.\d+)?"
_CURRENCY_RE = re.compile(r"([$€£])\s?(" + _NUM + r")(?:\s?(million|billion|thousand|trillion))?")
_PERCENT_RE = re.compile(r"(" + _NUM + r")\s?%")
_ORDINAL_RE = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_YEAR_RE = re.compile(r"\b(1[1-9]\d\d|20\d\d)\b(?!\.\d)")
_TIME_RE = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_NUMBER_RE = re.compile(r"-?" + _NUM)
_SENTENCE_RE = re.compile(r"(?<=[.!?…])[\"')\]]*\s+")


def _number(text: str) -> str:
    clean = text.replace(",", "")
    try:
        value = float(clean) if "." in clean else int(clean)
    except ValueError:
        return text
    if isinstance(value, float) and "." in clean:
        whole, frac = clean.lstrip("-").split(".")
        words = num2words(int(whole)) + " point " + " ".join(num2words(int(d)) for d in frac)
        return ("minus " if clean.startswith("-") else "") + words
    return num2words(value)


def _currency(m: re.Match) -> str:
    one, many, sub_one, sub_many = _CURRENCIES[m.group(1)]
    amount, scale = m.group(2).replace(",", ""), m.group(3)
    if scale:
        return f"{_number(amount)} {scale} {many}"
    whole, _, frac = amount.partition(".")
    w = int(whole)
    parts = [f"{num2words(w)} {one if w == 1 else many}"] if w or not frac else []
    if frac:
        c = int((frac + "0")[:2])
        if c:
            parts.append(f"{num2words(c)} {sub_one if c == 1 else sub_many}")
    return " and ".join(parts) or f"zero {many}"


def _time(m: re.Match) -> str:
    h, mins = int(m.group(1)), int(m.group(2))
    if mins == 0:
        return f"{num2words(h)} o'clock"
    return f"{num2words(h)} {'oh ' + num2words(mins) if mins < 10 else num2words(mins)}"


def normalize_text(text: str) -> str:
    """Spell out numbers, ordinals, currency, percentages, common abbreviations and symbols.

    Example: ``"Dr. Smith paid $3.50 for 2 apples (10% off) on the 3rd"`` ->
    ``"doctor Smith paid three dollars and fifty cents for two apples (ten percent off) on the third"``.
    """
    out = " ".join(text.split())
    for abbr, word in _ABBREVIATIONS.items():
        out = re.sub(r"(?<![\w.])" + re.escape(abbr), word, out, flags=re.IGNORECASE)
    out = _CURRENCY_RE.sub(_currency, out)
    out = _PERCENT_RE.sub(lambda m: f"{_number(m.group(1))} percent", out)
    out = _ORDINAL_RE.sub(lambda m: num2words(int(m.group(1)), to="ordinal"), out)
    out = _TIME_RE.sub(_time, out)
    out = _YEAR_RE.sub(lambda m: num2words(int(m.group(1)), to="year"), out)
    out = _NUMBER_RE.sub(lambda m: _number(m.group(0)), out)
    for sym, word in _SYMBOLS.items():
        out = out.replace(sym, word)
    return " ".join(out.split())


def split_sentences(text: str, max_chars: int = 300, *, pack: bool = True) -> list[str]:
    """Split at sentence ends and pack sentences into pieces of at most ``max_chars``.

    A single sentence longer than ``max_chars`` is split further at commas/semicolons, then
    at spaces, so every piece fits. ``pack=False`` keeps one sentence per piece (streaming
    engines use it so the first sentence's audio is out before the rest is made).
    """
    sentences = [s.strip() for s in _SENTENCE_RE.split(text.strip()) if s.strip()]
    pieces: list[str] = []
    for s in sentences:
        for part in _split_long(s, max_chars):
            if pack and pieces and len(pieces[-1]) + 1 + len(part) <= max_chars:
                pieces[-1] += " " + part
            else:
                pieces.append(part)
    return pieces


def _split_long(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    out: list[str] = []
    for clause in re.split(r"(?<=[,;:])\s+", sentence):
        words = clause.split()
        cur = ""
        for w in words:
            if cur and len(cur) + 1 + len(w) > max_chars:
                out.append(cur)
                cur = w
            else:
                cur = f"{cur} {w}" if cur else w
        if cur:
            out.append(cur)
    return out
