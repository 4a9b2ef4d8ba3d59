"""A small English text front-end: input checks, numbers, symbols and abbreviations -> words; sentence splitting.

CSM reads raw text through a BPE tokenizer and mispronounces "$3.50", "42%" or "Dr." often
enough that spelling them out first is worth it. Plain words pass through unchanged, so
normalising twice is harmless.

:func:`clean_text` / :func:`check_text` are the one input rule every entry point uses
(``/v1/audio/speech``, ``/api/generate``, conversations, the WebSocket): zero-width
characters are dropped, control characters (NUL, escape, …) are refused, and text with
nothing to say (empty, or only whitespace/punctuation/control/zero-width characters) is
refused with the same message everywhere.
"""

from __future__ import annotations

import re
import unicodedata

from num2words import num2words

# ------------------------------------------------------------------ input rule
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
_ZERO_WIDTH_RE = re.compile(f"[{ZERO_WIDTH}]")
_WORD_CHAR_RE = re.compile(r"[^\W_]")
# Characters allowed besides printable ones: tab, newline, carriage return.
_ALLOWED_CONTROLS = {"\t", "\n", "\r"}
# The rule as a JSON-Schema pattern (documented on the text fields of the API): at least one
# letter or digit, no control characters other than tab / newline / carriage return.
TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*[^\W_][^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"


class TextError(ValueError):
    """The text breaks the input rule; the message says what is wrong in the user's terms."""


def clean_text(text: str) -> str:
    """The one input normalisation: NFC, zero-width characters dropped (they are never spoken)."""
    return _ZERO_WIDTH_RE.sub("", unicodedata.normalize("NFC", text))


def check_text(text: str, *, limit: int | None = None, name: str = "text") -> str:
    """Validate and clean ``text``; return the cleaned text or raise :class:`TextError`.

    Refused: more than ``limit`` characters, any control character except tab/newline/CR
    (NUL included), and text with no letter or digit (empty, whitespace, punctuation,
    control or zero-width characters only).
    """
    if limit is not None and len(text) > limit:
        raise TextError(f"{name} is longer than {limit} characters ({len(text)} given)")
    for i, ch in enumerate(text):
        if ch not in _ALLOWED_CONTROLS and unicodedata.category(ch) == "Cc":
            raise TextError(
                f"{name} contains a control character (U+{ord(ch):04X}) at position {i + 1}; "
                "send plain text (tabs and newlines are fine)"
            )
    cleaned = clean_text(text)
    if not _WORD_CHAR_RE.search(cleaned):
        raise TextError(
            f"{name} has nothing to say: it needs at least one letter or digit "
            "(it is empty or only spaces, punctuation or invisible characters)"
        )
    return cleaned


# ------------------------------------------------------------------ speaking rate
# The one speaking-rate constant: characters of normalised text per second at speed 1 (a
# relaxed reading pace). Estimates (progress, "about N s") use it; budgets (how much audio a
# request may produce before it is cut as a runaway) allow twice that time plus 2 s, so a
# text within the character limit is always spoken in full.
CHARS_PER_SECOND = 15.0
BUDGET_FACTOR = 2.0
BUDGET_SLACK_S = 2.0


def speech_seconds(text: str, speed: float = 1.0, *, normalized: bool = False) -> float:
    """About how long ``text`` takes to say at ``speed`` (at least half a second)."""
    chars = len(text if normalized else normalize_text(text))
    return max(0.5, chars / CHARS_PER_SECOND / max(speed, 0.25))


def audio_budget_ms(text: str, speed: float = 1.0, *, floor_ms: int = 0, normalized: bool = False) -> int:
    """The most audio (ms) ``text`` may produce: generous, so a text is never cut short; never below ``floor_ms``.

    ``speed`` above 1 never shrinks the budget (CSM speaks at its own pace and is sped up afterwards).
    """
    seconds = speech_seconds(text, min(1.0, speed or 1.0), normalized=normalized)
    return max(int(floor_ms), int((BUDGET_FACTOR * seconds + BUDGET_SLACK_S) * 1000))


def max_audio_seconds(max_chars: int, speed: float = 1.0) -> float:
    """The audio limit that follows from a character limit: the budget of ``max_chars`` characters."""
    return BUDGET_FACTOR * max_chars / CHARS_PER_SECOND / max(speed, 0.25) + BUDGET_SLACK_S


# ------------------------------------------------------------------ normalisation
_ABBREVIATIONS = {
    "mr.": "mister", "mrs.": "missus", "ms.": "miz", "dr.": "doctor", "prof.": "professor",
    "jr.": "junior", "sr.": "senior", "vs.": "versus", "etc.": "et cetera", "e.g.": "for example",
    "i.e.": "that is", "approx.": "approximately", "mt.": "mount", "ft.": "feet", "ave.": "avenue",
    "rd.": "road", "blvd.": "boulevard",
}  # fmt: skip
_SYMBOLS = {"&": " and ", "@": " at ", "+": " plus ", "=": " equals ", "#": " number ", "°": " degrees "}
_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
               "£": ("pound", "pounds", "penny", "pence"), "¥": ("yen", "yen", "sen", "sen")}  # fmt: skip
# Units after a number: symbol → (singular, plural).
_UNITS = {
    "km/h": ("kilometre per hour", "kilometres per hour"), "mph": ("mile per hour", "miles per hour"),
    "km": ("kilometre", "kilometres"), "cm": ("centimetre", "centimetres"), "mm": ("millimetre", "millimetres"),
    "m": ("metre", "metres"), "kg": ("kilogram", "kilograms"), "g": ("gram", "grams"), "mg": ("milligram", "milligrams"),
    "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"), "oz": ("ounce", "ounces"), "mi": ("mile", "miles"),
    "ml": ("millilitre", "millilitres"), "l": ("litre", "litres"), "kb": ("kilobyte", "kilobytes"),
    "mb": ("megabyte", "megabytes"), "gb": ("gigabyte", "gigabytes"), "tb": ("terabyte", "terabytes"),
    "ms": ("millisecond", "milliseconds"), "s": ("second", "seconds"), "min": ("minute", "minutes"),
    "h": ("hour", "hours"), "hz": ("hertz", "hertz"), "khz": ("kilohertz", "kilohertz"),
    "kw": ("kilowatt", "kilowatts"), "kwh": ("kilowatt hour", "kilowatt hours"), "w": ("watt", "watts"),
    "v": ("volt", "volts"), "°c": ("degree Celsius", "degrees Celsius"), "°f": ("degree Fahrenheit", "degrees Fahrenheit"),
}  # fmt: skip
# Upper-case words said as words, not letter by letter, and short words that are often shouted.
_SAID_AS_WORDS = {
    "NASA", "NATO", "FIFA", "OPEC", "UNESCO", "UNICEF", "AIDS", "COVID", "SCUBA", "LASER", "RADAR", "ASAP",
    "GIF", "JPEG", "PIN", "SIM", "RAM", "ROM", "LAN", "WAN", "WIFI", "IKEA", "LEGO", "OK", "I", "A", "AM", "PM",
    "AN", "AS", "AT", "BE", "BY", "DO", "GO", "HE", "IF", "IN", "IS", "IT", "ME", "MY", "NO", "OF", "OH", "ON",
    "OR", "SO", "TO", "UP", "US", "WE", "THE", "AND", "FOR", "YOU", "NOT", "BUT", "ALL", "ARE", "WAS", "CAN",
    "HAS", "HAD", "HER", "HIS", "HOW", "NOW", "NEW", "OUT", "OUR", "SEE", "WHO", "WHY", "YES", "STOP", "HELP",
    "THIS", "THAT", "WITH", "WHAT", "WHEN", "WILL", "YOUR", "VERY", "GOOD", "JUST", "LIKE", "LOVE", "NEVER",
}  # fmt: skip

_NUM = r"\d+(?:,\d{3})*(?:\.\d+)?"
_CURRENCY_RE = re.compile(r"([$€£¥])\s?(" + _NUM + r")(?:\s?(million|billion|thousand|trillion))?")
_PERCENT_RE = re.compile(r"(" + _NUM + r")\s?%")
_ORDINAL_RE = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_YEAR_RE = re.compile(r"(?<![\d.,])\b(1[1-9]\d\d|20\d\d)\b(?![.,]\d)")
_TIME_RE = re.compile(r"\b(\d{1,2}):(\d{2})(?:\s?([AaPp])\.?[Mm]\.?(?![\w]))?")
_HOUR_AMPM_RE = re.compile(r"\b(\d{1,2})\s?([AaPp])\.?[Mm]\b\.?")
_PHONE_RE = re.compile(
    r"(?<![\w-])(?:\+(\d{1,3})[\s.-]?)?(?:\((\d{3})\)\s?|(\d{3})[\s.-])?(\d{3})[.-](\d{4})(?![\w-])"
)
_UNIT_RE = re.compile(
    r"(" + _NUM + r")(?:\s?(" + "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True) if len(u) > 1)
    + r")|\s(" + "|".join(u for u in _UNITS if len(u) == 1) + r"))(?![\w/])",
    re.IGNORECASE,
)  # one-letter units only after a space: "5 m", but "the 1990s" is a decade
_DECADE_RE = re.compile(r"\b(1[1-9]\d0|20\d0)s\b")
_RANGE_RE = re.compile(r"(?<![\w.-])(" + _NUM + r")-(" + _NUM + r")(?![\w-])")
_LETTERS_DIGITS_RE = re.compile(r"\b([A-Za-z]{1,3})(\d+)\b|\b(\d+)([A-Za-z])\b")
_INITIALISM_RE = re.compile(r"\b[A-Z]{2,4}s?\b")
_STREET_RE = re.compile(r"(?<![\w.])St\.", re.IGNORECASE)
_NUMBER_RE = re.compile(r"(?<![\w-])-(?=\d)" + _NUM + r"|" + _NUM)
_SENTENCE_END_RE = re.compile(r"([.!?…]+)([\"'”’)\]]*)(?=\s)")
# Words after which a full stop is not a sentence end (lower case, without the final dot).
ABBREVIATIONS = frozenset(
    {a.lower().rstrip(".") for a in _ABBREVIATIONS}
    | {"st", "fig", "inc", "ltd", "co", "corp", "dept", "gov", "lt", "col", "capt", "sgt", "vol", "pp", "no"}
)
_DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


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


def _is_one(amount: str) -> bool:
    return amount.replace(",", "") in ("1", "1.0")


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


def _ampm(letter: str | None) -> str:
    return f" {letter.lower()} m" if letter else ""


def _time(m: re.Match) -> str:
    h, mins, ampm = int(m.group(1)), int(m.group(2)), m.group(3)
    if h > 24 or mins > 59:  # not a time (a score, a ratio): read the numbers
        return f"{num2words(h)} {num2words(mins)}"
    if mins == 0:
        return f"{num2words(h)}{_ampm(ampm)}" if ampm else f"{num2words(h)} o'clock"
    return f"{num2words(h)} {'oh ' + num2words(mins) if mins < 10 else num2words(mins)}{_ampm(ampm)}"


def _digits(group: str) -> str:
    return " ".join(_DIGIT_WORDS[int(d)] for d in group)


def _phone(m: re.Match) -> str:
    groups = [g for g in m.groups() if g]
    return ", ".join(_digits(g) for g in groups)


def _unit(m: re.Match) -> str:
    amount, unit = m.group(1), m.group(2) or m.group(3)
    key = unit.lower()
    if key not in _UNITS:
        return m.group(0)
    if unit in ("M",):  # "5M" is five million, not five metres
        return f"{_number(amount)} million"
    one, many = _UNITS[key]
    return f"{_number(amount)} {one if _is_one(amount) else many}"


def _letters_digits(m: re.Match) -> str:
    if m.group(1):  # Q2, MP3, A4
        return f"{' '.join(m.group(1).upper()) if m.group(1).isupper() or len(m.group(1)) == 1 else m.group(1)} {_number(m.group(2))}"
    return f"{_number(m.group(3))} {m.group(4).upper()}"  # 221B


def _initialism(m: re.Match) -> str:
    word = m.group(0)
    plural = word.endswith("s") and word[:-1].isupper()
    core = word[:-1] if plural else word
    if core in _SAID_AS_WORDS or len(core) < 2:
        return word
    return " ".join(core) + ("'s" if plural else "")


def _street(m: re.Match, text: str) -> str:
    """"St." is Street after a name or a house number ("Baker St.", "5th St."), else Saint ("St. Louis")."""
    before = text[: m.start()].rstrip()
    prev = before.split()[-1] if before.split() else ""
    after = text[m.end() :].lstrip()
    nxt = after.split()[0] if after.split() else ""
    if prev and prev[0].isupper() and not prev.endswith((".", "!", "?")):
        return "Street"
    if prev and prev[0].isdigit():
        return "Street"
    if nxt and nxt[0].isupper():
        return "Saint"
    return "Street" if prev else "Saint"


def normalize_text(text: str) -> str:
    """Spell out numbers, ordinals, currency, percentages, times, phone numbers, units,
    initialisms, common abbreviations and symbols.

    Example: ``"Dr. Smith paid $3.50 for 2 apples (10% off) on the 3rd"`` ->
    ``"doctor Smith paid three dollars and fifty cents for two apples (ten percent off) on the third"``.
    """
    out = " ".join(clean_text(text).split())
    out = _STREET_RE.sub(lambda m: _street(m, out), out)
    for abbr, word in _ABBREVIATIONS.items():
        out = re.sub(r"(?<![\w.])" + re.escape(abbr), word, out, flags=re.IGNORECASE)
    out = re.sub(r"(?<![\w.])No\.\s?(?=\d)", "number ", out, flags=re.IGNORECASE)
    out = _PHONE_RE.sub(_phone, out)
    out = _CURRENCY_RE.sub(_currency, out)
    out = _PERCENT_RE.sub(lambda m: f"{_number(m.group(1))} percent", out)
    out = _ORDINAL_RE.sub(lambda m: num2words(int(m.group(1)), to="ordinal"), out)
    out = _TIME_RE.sub(_time, out)
    out = _HOUR_AMPM_RE.sub(lambda m: f"{num2words(int(m.group(1)))}{_ampm(m.group(2))}", out)
    out = _UNIT_RE.sub(_unit, out)
    out = _DECADE_RE.sub(lambda m: re.sub(r"y$", "ies", num2words(int(m.group(1)), to="year")) + "", out)
    out = _RANGE_RE.sub(lambda m: f"{_number(m.group(1))} to {_number(m.group(2))}", out)
    out = _YEAR_RE.sub(lambda m: num2words(int(m.group(1)), to="year"), out)
    out = _LETTERS_DIGITS_RE.sub(_letters_digits, out)
    out = _NUMBER_RE.sub(lambda m: _number(m.group(0)), out)
    out = re.sub(r"(?<=\w)-(?=\d)", " ", out)
    out = _INITIALISM_RE.sub(_initialism, out)
    for sym, word in _SYMBOLS.items():
        out = out.replace(sym, word)
    return " ".join(out.split())


def ends_sentence(text: str, m: re.Match) -> bool:
    """Is the end punctuation matched by ``m`` (group 1) really the end of a sentence?

    A full stop after a common abbreviation ("Dr.", "e.g.", "St.") or a single initial
    ("J. Smith") does not end one; decimals ("3.5") never match (no space after the dot).
    """
    if m.group(1) != ".":
        return True
    before = text[: m.start(1)].rsplit(None, 1)
    last = before[-1].lower().lstrip("\"'([") if before else ""
    word = last.rstrip(".")
    if word == "no":  # "No. 5" is "number five"; "I said no." ends a sentence
        return not text[m.end(1) :].lstrip()[:1].isdigit()
    return not (word in ABBREVIATIONS or (len(last) == 1 and last.isalpha() and last != "i"))


def sentence_ends(text: str) -> list[int]:
    """Offsets just after each complete sentence of ``text`` (end punctuation, closing quotes,
    then whitespace): the one sentence rule of EchoForge (the server, the WebSocket, the
    engines, the agent and its knowledge base all cut here)."""
    return [m.end(2) for m in _SENTENCE_END_RE.finditer(text) if ends_sentence(text, m)]


def split_complete(buffer: str) -> tuple[list[str], str]:
    """Complete sentences at the front of a streamed ``buffer`` and the unfinished rest."""
    ends = sentence_ends(buffer)
    if not ends:
        return [], buffer
    done, rest = buffer[: ends[-1]], buffer[ends[-1] :]
    return sentences_of(done), rest.lstrip()


def sentences_of(text: str) -> list[str]:
    """``text`` cut into sentences (one piece per sentence, nothing packed or cut further)."""
    out, start = [], 0
    for end in sentence_ends(text):
        if piece := text[start:end].strip():
            out.append(piece)
        start = end
    if piece := text[start:].strip():
        out.append(piece)
    return out


def split_sentences(text: str, max_chars: int = 300, *, pack: bool = True) -> list[str]:
    """Split at sentence ends and pack sentences into pieces of at most ``max_chars``.

    A single sentence longer than ``max_chars`` is split further at commas/semicolons, then
    at spaces, so every piece fits. ``pack=False`` keeps one sentence per piece (streaming
    engines use it so the first sentence's audio is out before the rest is made).
    """
    pieces: list[str] = []
    for s in sentences_of(text):
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
