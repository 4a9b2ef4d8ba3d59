"""Grounding: what the agent may say as an answer, decided in one place.

* :func:`asks_for_fact` — a question of fact (the notes must answer it) vs small talk or a request.
* :func:`small_talk_reply` — greetings, thanks, goodbye, "how are you", "who are you", "what can you
  do": the persona's own short reply, never the don't-know line.
* :func:`answer_type` / :func:`satisfies` — a question's expected kind of answer (a phone number
  needs digits, "how much" an amount, "who" a name …) and whether a note's sentence gives one.
* :func:`choose_answer` — the notes' sentence to speak, or an honest decline that says what the
  notes do say (:func:`decline`).
* :func:`ungrounded`, :func:`support`, :func:`answers` — checks on generated text: numbers and
  names the model was not given, words not from the notes, no answer from the notes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DONT_KNOW = "I don't know that, and it isn't in my notes."
DECLINE_PREFIX = "My notes don't say that."

_SMALL_TALK = re.compile(
    r"^(hi|hello|hey|thanks|thank you|good (morning|evening|night|afternoon)|bye|goodbye|how are you|"
    r"how's it going|what's up|who are you|what('s| is) your name|nice to meet you|what can you do|"
    r"what do you do|what are you|cheers|see you)\b"
)
_FACT_START = re.compile(
    r"^(who|what|when|where|which|whose|why|how (many|much|long|old|far|big|tall|fast|do|does|did|can|is|are)|"
    r"(is|are|was|were|does|do|did|can|could|will|has|have) \w+|tell me about|explain|describe|define|name)\b"
)
_CAPITAL_OK = {"i", "echo", "echoforge", "ok", "okay", "yes", "no"}


def _norm(text: str) -> str:
    t = " ".join(re.sub(r"[^\w' ]+", " ", text.lower()).split())
    return re.sub(r"^(so|and|but|ok|okay|well|um|uh|please|hey echo|echo)\s+", "", t)


def asks_for_fact(text: str) -> bool:
    """Whether an utterance asks for information (a question or "tell me about…"), not small talk.

    Requests such as "tell me a story" or "tell me a joke" are not fact questions: the model may
    answer them freely. Greetings, "how are you" and questions about the agent itself are small talk.
    """
    t = _norm(text)
    if not t or _SMALL_TALK.match(t) or small_talk_kind(text):
        return False
    return bool(_FACT_START.match(t))


# --- small talk ------------------------------------------------------------------------------------

_SMALL_TALK_KINDS = [
    ("capabilities", r"\b(what can you do|what do you do|what are you (able|good) (to|at)|how can you help|what can i ask)\b"),
    ("identity", r"\b(who are you|what('s| is) your name|what are you)\b"),
    ("goodbye", r"\b(bye|goodbye|good night|see you|that's all|talk later)\b"),
    ("thanks", r"\b(thanks|thank you|cheers|much appreciated)\b"),
    ("how_are_you", r"\b(how are you|how's it going|how are things|how do you do|what's up)\b"),
    ("greeting", r"^(hi|hello|hey|good (morning|afternoon|evening)|nice to meet you)\b"),
]

_SMALL_TALK_REPLIES = {
    "capabilities": "I can answer questions from my notes about {topic}, and you can interrupt me any time. What would you like to know?",
    "identity": "I'm {name}, the voice assistant here. Ask me anything about {topic}.",
    "goodbye": "Goodbye! It was nice talking with you.",
    "thanks": "You're welcome! Anything else?",
    "how_are_you": "I'm doing well, thanks for asking. What can I help you with?",
    "greeting": "Hello! What can I help you with today?",
}


def small_talk_kind(text: str) -> str | None:
    """``greeting``, ``how_are_you``, ``thanks``, ``goodbye``, ``identity``, ``capabilities`` or ``None``.

    Only short utterances count: "thanks, and what port does it use?" is a question.
    """
    t = _norm(text)
    if not t or len(t.split()) > 8:
        return None
    for kind, pattern in _SMALL_TALK_KINDS:
        if re.search(pattern, t):
            rest = re.sub(pattern, " ", t)
            # A greeting followed by a real question ("hi, what port…") is the question.
            if kind in ("greeting", "thanks") and _FACT_START.match(_norm(rest)):
                return None
            # "how are you" wins over a greeting in "hello, how are you".
            if kind == "greeting" and re.search(_SMALL_TALK_KINDS[4][1], t):
                return "how_are_you"
            return kind
    return None


def small_talk_reply(text: str, name: str = "Echo", topic: str = "EchoForge") -> str | None:
    """The persona's short reply to small talk (``None``: not small talk).

    Args:
        text: what the user said.
        name: the persona's name.
        topic: what the notes are about, for "what can you do".
    """
    kind = small_talk_kind(text)
    return _SMALL_TALK_REPLIES[kind].format(name=name, topic=topic) if kind else None


# --- answer types ------------------------------------------------------------------------------------

_NUMBER_WORDS = (
    r"(zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|"
    r"seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|thousand|million|"
    r"dozen|half|a few|several|single|once|twice)"
)
_UNITS = r"(second|minute|hour|day|week|month|year|meter|metre|kilometer|mile|gram|kilo|byte|[kmg]b|hz|kilohertz|percent)s?"
_MONTHS = r"(january|february|march|april|may|june|july|august|september|october|november|december)"
_DAYS = r"(monday|tuesday|wednesday|thursday|friday|saturday|sunday|weekday|weekend|daily|tonight|today|tomorrow)s?"


@dataclass(frozen=True)
class AnswerType:
    """What a question asks for: ``kind`` and, for "how many X" / "where is X", the focus ``noun``."""

    kind: str
    noun: str = ""


_QUESTION_TYPES: list[tuple[str, str]] = [
    ("phone", r"\b(phone|telephone|mobile) (number)?|\bnumber (to|i can) call\b|\bcall (you|them|us)\b|\bfax\b"),
    ("email", r"\be ?mail\b"),
    ("price", r"\bhow much (does|do|is|are|will|would|did)\b|\b(cost|costs|price|prices|pricing|fee|fees|charge)\b"),
    ("time", r"\bwhat time\b|\bopening (hours|times)\b|\bwhen (does|do|is|are) .*\b(open|close|start|begin|leave|depart|arrive)\b"),
    ("year", r"^when (was|were|did)\b|\bwhat year\b|\bwhich year\b|\bsince when\b|\bhow old\b"),
    ("date", r"^when\b|\bwhat (day|date|month)\b|\bwhich (day|date|month)\b"),
    ("quantity", r"\bhow (many|much|long|old|far|big|tall|fast|heavy|often|wide|high|deep|large|small)\b"),
    ("person", r"^(who|whose|whom)\b"),
    ("place", r"^where\b"),
]
_PRONOUNS = frozenset("it its she he her him his they them their there this that one".split())
_STOP = frozenset("the a an my your our their its this that these those of in on at to for do does did is are was were".split())


def answer_type(question: str) -> AnswerType | None:
    """The kind of answer ``question`` needs, or ``None`` when any note sentence may do.

    ``phone``, ``email``, ``price``, ``time``, ``date``, ``quantity``, ``person``, ``place``.
    """
    t = _norm(question)
    for kind, pattern in _QUESTION_TYPES:
        m = re.search(pattern, t)
        if not m:
            continue
        noun = ""
        if kind == "quantity" and m.group(1) in ("many", "much"):
            words = [w for w in t[m.end() :].split() if w not in _STOP]
            noun = words[0] if words and words[0] not in ("does", "do", "is", "are", "can", "will") else ""
        elif kind == "place":
            words = [w for w in re.sub(r"^where\s+(is|are|was|were|can|do|does|did)\s+", "", t).split() if w not in _STOP]
            noun = next((w for w in reversed(words) if w not in ("i", "you", "find", "get", "go", "located", "stored", "kept")), "")
            noun = words[0] if words and noun in ("", "from") else noun
        if noun in _PRONOUNS:
            noun = ""
        return AnswerType(kind, noun)
    return None


def _stems(text: str) -> set[str]:
    from echoforge.agent.rag_lexical import tokenize

    return set(tokenize(text))


def _mentions(sentence: str, noun: str) -> bool:
    """Whether ``sentence`` names ``noun``: the same stem, or a compound that starts with it (the
    recogniser's "Echo Forge" asks about what the notes call EchoForge)."""
    nouns, words = _stems(noun), _stems(sentence)
    return bool(nouns & words) or any(w.startswith(n) for n in nouns if len(n) >= 4 for w in words)


def satisfies(sentence: str, kind: AnswerType | None, question: str = "") -> bool:
    """Whether ``sentence`` gives the kind of answer ``kind`` asks for (``None``: any sentence does)."""
    if kind is None:
        return True
    low = sentence.lower()
    has_number = bool(re.search(r"\d", low) or re.search(rf"\b{_NUMBER_WORDS}\b", low))
    focus_ok = not kind.noun or _mentions(sentence, kind.noun)
    k = kind.kind
    if k == "phone":
        return len(re.sub(r"\D", "", " ".join(re.findall(r"[+(]?\d[\d\s().-]{5,}\d", sentence)))) >= 6
    if k == "email":
        return bool(re.search(r"[\w.+-]+@[\w-]+\.\w+", sentence))
    if k == "price":
        return bool(
            re.search(r"[$€£¥]\s?\d|\d\s?(€|eur|usd|gbp)\b", low)
            or re.search(r"\b(free|no charge|costs? nothing|dollars?|euros?|pounds?|cents?|pence)\b", low)
        )
    if k == "time":
        return bool(
            re.search(r"\b\d{1,2}([:.]\d{2})?\s?(am|pm|a\.m\.|p\.m\.|o'clock|h)\b|\b\d{1,2}:\d{2}\b", low)
            or re.search(r"\b(noon|midnight|morning|evening|afternoon|night)\b", low)
            or re.search(rf"\b{_DAYS}\b", low)
        )
    if k == "year":
        return bool(re.search(r"\b(1[5-9]|20)\d{2}\b", low) or re.search(rf"\b{_MONTHS}\b", low) or re.search(r"\bago\b", low))
    if k == "date":
        return bool(
            re.search(r"\b(1[5-9]|20)\d{2}\b", low) or re.search(rf"\b{_MONTHS}\b", low) or re.search(rf"\b{_DAYS}\b", low)
            or re.search(r"\b(ago|since|before|after|until|when|whenever|every time|as soon as|once)\b", low)
        )  # fmt: skip
    if k == "quantity":
        if kind.noun:  # "how many voices": a number and the thing counted
            return has_number and focus_ok
        # "how long / old / far / fast …": a number with a unit, or "a second", "an hour"
        return bool(re.search(rf"(\d|\b{_NUMBER_WORDS})\S*\s+(\S+\s+){{0,3}}?{_UNITS}\b", low)) or bool(
            re.search(rf"\b(a|an|per)\s+{_UNITS}\b", low)
        )
    if k == "person":
        # A full name ("Ada Morgan", "Sesame's CSM-1B"), a title and a name ("Dr. Morgan"), or a role.
        q = {w.lower() for w in re.findall(r"[A-Za-z][\w'-]*", question)}
        words = re.findall(r"[A-Za-z][\w'-]*", sentence)
        caps = [bool(w[0].isupper() and w.lower() not in q and w.lower() not in _CAPITAL_OK) for w in words]
        # A name starts with a capital and a lower-case letter ("Ada", "Sesame's"; not "CUDA GPU").
        full_name = any(
            i > 0 and caps[i] and caps[i + 1] and re.match(r"[A-Z][a-z]", words[i]) for i in range(len(words) - 1)
        )
        titled = bool(re.search(r"\b(dr|mr|mrs|ms|prof)\.?\s+[A-Z]", sentence))
        role = bool(re.search(r"\b(founded|written|created|developed|made|built|run|led) by\b", low))
        return full_name or titled or role
    if k == "place":
        # A location phrase ("next to the old church", "in the data directory", "at api health"),
        # not a time one ("on Mondays", "at 9:00", "in the morning").
        spot = re.sub(rf"\b(on|in|at|from|until)\s+(the\s+)?({_DAYS}|{_MONTHS}|\d\S*|morning|evening|afternoon|night|noon)\b", " ", low)
        where = bool(
            re.search(r"\b(in|at|near|inside|under|behind|beside|opposite|next to|from)\s+(the\s+|a\s+|your\s+|my\s+)?\w", spot)
            or re.search(r"\bon\s+(the|a|your|my)\s+\w", spot)
            or "/" in spot
        )
        return where and focus_ok
    return True


# Words that say what kind of answer is wanted, not what it is about.
_CUES = (
    "how much many long old far big tall fast often cost costs price fee charge pay phone telephone number call "
    "email mail address time when where who whose whom what which year day date month open close start begin"
)


def topic_terms(question: str) -> set[str]:
    """The question's content terms (stems) without its answer-type cues: what it is about."""
    return _stems(question) - _stems(_CUES) - _generic()


def choose_answer(
    question: str, sentences: Sequence[str], kind: AnswerType | None = None, contexts: Sequence[str] | None = None
) -> str | None:
    """The first of the notes' ``sentences`` (best first) that answers ``question``, or ``None``.

    A sentence answers when it gives the kind of answer asked for (:func:`satisfies`) and comes
    from a passage (``contexts[i]``, the sentence's chunk with its heading) about what the question
    is about: "how much does the museum cost?" is not answered by the ferry's price.
    """
    kind = answer_type(question) if kind is None else kind
    topic = topic_terms(question)
    for i, sentence in enumerate(sentences):
        context = contexts[i] if contexts is not None else sentence
        if topic and not topic & _stems(context):
            continue
        if satisfies(sentence, kind, question):
            return sentence
    return None


def decline(question: str, offer: str | None) -> str:
    """An honest "the notes don't say", with what they do say when it is about the question."""
    if offer:
        shared = _stems(offer) & _stems(question) - _generic()
        if shared:
            return f"{DECLINE_PREFIX} They only say: {offer}"
    return DONT_KNOW


def is_decline(reply: str) -> bool:
    """Whether a reply declines (the don't-know line, or "My notes don't say that. …")."""
    return reply.startswith((DONT_KNOW, DECLINE_PREFIX))


_LABEL = re.compile(
    r"^\s*[(\[][a-z][a-z ]{1,20}[)\]]\s*|\s*\((confidence|emotion|mood|tone)[^)]*\)|\b(emotion|mood|tone): *\w+\b[.,;]?",
    re.IGNORECASE,
)


def strip_labels(piece: str) -> str:
    """A reply piece without emotion / tone labels a model copied from its prompt ("(excited) …")."""
    return " ".join(_LABEL.sub(" ", piece).split())


# --- checks on generated text ----------------------------------------------------------------------


def ungrounded(piece: str, known: str, names: bool = True) -> list[str]:
    """Numbers (and, with ``names``, capitalised words after the first) in ``piece`` that ``known`` lacks.

    ``known`` is what the model was given (notes, question, history). An invented port, year or
    person shows up here; the caller drops the piece instead of speaking it.
    """
    low = known.lower()
    found = []
    for n in re.findall(r"\d+(?:[.,:]\d+)*", piece):
        if n not in low:
            found.append(n)
    if names:
        words = re.findall(r"[A-Za-z][\w'-]*", piece)
        for w in words[1:]:
            if w[0].isupper() and w.lower() not in _CAPITAL_OK and w.lower().strip("'s") not in low:
                found.append(w)
    return found


@functools.cache
def _generic() -> frozenset[str]:
    """Words that carry no fact, as retrieval's tokenizer stems them (so the set follows its stemmer)."""
    from echoforge.agent.rag_lexical import tokenize

    return frozenset(tokenize("answer echo assistant sure yes note question help great well just also know"))


def support(piece: str, known: str) -> float:
    """Share of the piece's content terms that occur in ``known`` (1.0 for a piece with none).

    For answers from notes: a piece built from other words than the notes' ("The answer is: Echo,
    the voice assistant") is not an answer from them, whatever it says.
    """
    from echoforge.agent.rag_lexical import tokenize

    terms = [t for t in tokenize(piece) if t not in _generic()]
    if not terms:
        return 1.0
    have = set(tokenize(known))
    return sum(t in have for t in terms) / len(terms)


def answers(reply: str, grounded: str, question: str) -> bool:
    """Whether ``reply`` shares a term of the notes' answer sentence that the question does not have."""
    from echoforge.agent.rag_lexical import tokenize

    new = set(tokenize(grounded)) - set(tokenize(question)) - _generic()
    return not new or bool(new & set(tokenize(reply)))


def note_sentences(question: str, passages: Sequence[Any], limit: int = 2, kb: Any = None) -> list[tuple[str, str]]:
    """``(source, sentence)``: the passages' sentences that answer the question best, in text order."""
    from echoforge.agent.rag import best_sentences

    return best_sentences(kb, question, list(passages), limit)


def ranked_sentences(question: str, passages: Sequence[Any], limit: int = 3, kb: Any = None) -> list[tuple[str, str]]:
    """``(passage text, sentence)``, best first (the order :func:`choose_answer` tries them in)."""
    from echoforge.agent.rag import best_sentences

    texts = {p.source: [] for p in passages}
    for p in passages:
        texts[p.source].append(p.text)
    out = []
    for source, sentence in best_sentences(kb, question, list(passages), limit, ordered=True):
        context = next((t for t in texts.get(source, []) if sentence in t), " ".join(texts.get(source, [])))
        out.append((context, sentence))
    return out


def extractive_answer(question: str, passages: Sequence[Any], kb: Any = None) -> str:
    """The sentence of the retrieved passages that answers the question best (the grounded answer)."""
    notes = note_sentences(question, passages, 1, kb)
    return notes[0][1] if notes else ""
