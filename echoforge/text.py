"""A small text front-end: numbers, currency, abbreviations and symbols → words; sentence splitting.

TTS models (CSM included) read "$3.50" or "Dr." badly; writing them out first helps every
engine. Kept deliberately small and predictable (English), built on num2words.
"""

from __future__ import annotations

import re

from num2words import num2words

_ABBREVIATIONS = {
    "Mr.": "Mister", "Mrs.": "Missus", "Ms.": "Miz", "Dr.": "Doctor", "Prof.": "Professor",
    "St.": "Saint", "Jr.": "Junior", "Sr.": "Senior", "vs.": "versus", "etc.": "et cetera",
    "e.g.": "for example", "i.e.": "that is", "approx.": "approximately", "No.": "number",
}
_SYMBOLS = {"&": " and ", "%": " percent", "+": " plus ", "=": " equals ", "@": " at ", "°C": " degrees Celsius", "°F": " degrees Fahrenheit", "°": " degrees"}
_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence")}

_CURRENCY_RE = re.compile(r"([$€£])\s?(\d[\d,]*)(?:\.(\d{1,2}))?")
_ORDINAL_RE = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_YEAR_RE = re.compile(r"\b(1[1-9]\d\d|20\d\d)\b")
_NUMBER_RE = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?![\w])")
_TIME_RE = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_SPACES_RE = re.compile(r"\s+")


def _int_words(digits: str) -> str:
    return num2words(int(digits.replace(",", "")))


def _currency(m: re.Match) -> str:
    one, many, sub_one, sub_many = _CURRENCY[m.group(1)]
    whole = int(m.group(2).replace(",", ""))
    cents = int((m.group(3) or "0").ljust(2, "0"))
    parts = [f"{num2words(whole)} {one if whole == 1 else many}"] if whole or not cents else []
    if cents:
        parts.append(f"{num2words(cents)} {sub_one if cents == 1 else sub_many}")
    return " and ".join(parts)


def _number(m: re.Match) -> str:
    text = m.group(0).replace(",", "")
    try:
        return num2words(float(text)) if "." in text else num2words(int(text))
    except (ValueError, OverflowError):
        return m.group(0)


def _time(m: re.Match) -> str:
    hours, minutes = int(m.group(1)), int(m.group(2))
    if hours > 24 or minutes > 59:
        return m.group(0)
    if minutes == 0:
        return f"{num2words(hours)} o'clock"
    return f"{num2words(hours)} {'oh ' + num2words(minutes) if minutes < 10 else num2words(minutes)}"


def normalize_text(text: str) -> str:
    """Write numbers, currency, times, ordinals, years, abbreviations and symbols as words."""
    out = text
    for abbr, full in _ABBREVIATIONS.items():
        out = re.sub(rf"(?<!\w){re.escape(abbr)}", full, out)
    out = _CURRENCY_RE.sub(_currency, out)
    out = _TIME_RE.sub(_time, out)
    out = _ORDINAL_RE.sub(lambda m: num2words(int(m.group(1)), to="ordinal"), out)
    out = _YEAR_RE.sub(lambda m: num2words(int(m.group(1)), to="year"), out)
    out = re.sub(r"(\d)\s*%", r"\1 percent", out)
    out = _NUMBER_RE.sub(_number, out)
    for sym, word in _SYMBOLS.items():
        out = out.replace(sym, word)
    return _SPACES_RE.sub(" ", out).strip()


_SENTENCE_END_RE = re.compile(r"(?<=[.!?…])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str, max_chars: int = 300) -> list[str]:
    """Split at sentence ends; sentences longer than ``max_chars`` split again at commas/spaces."""
    text = _SPACES_RE.sub(" ", text).strip()
    if not text:
        return []
    sentences = [s.strip() for s in _SENTENCE_END_RE.split(text) if s.strip()]
    out: list[str] = []
    for s in sentences:
        while len(s) > max_chars:
            cut = max(s.rfind(", ", 0, max_chars), s.rfind("; ", 0, max_chars))
            if cut < max_chars // 3:
                cut = s.rfind(" ", 0, max_chars)
            if cut <= 0:
                cut = max_chars
            out.append(s[: cut + 1].strip())
            s = s[cut + 1 :].strip()
        if s:
            out.append(s)
    return out
