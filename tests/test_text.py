"""The text front-end: input rule (one for every entry point) and a table of inputs → spoken words."""

from __future__ import annotations

import pytest

from echoforge.text import (
    TextError,
    audio_budget_ms,
    check_text,
    clean_text,
    max_audio_seconds,
    normalize_text,
    sentence_ends,
    speech_seconds,
    split_complete,
    split_sentences,
)

SPOKEN = [
    ("221B Baker St.", "two hundred and twenty-one B Baker Street"),
    ("St. Louis is lovely", "Saint Louis is lovely"),
    ("Meet me on 5th St. tomorrow", "Meet me on fifth Street tomorrow"),
    ("Call 555-0134 now", "Call five five five, zero one three four now"),
    ("Call (555) 123-4567", "Call five five five, one two three, four five six seven"),
    ("Revenue rose in Q2.", "Revenue rose in Q two."),
    ("at 3:45 PM", "at three forty-five p m"),
    ("at 9 a.m. sharp", "at nine a m sharp"),
    ("at 12:00", "at twelve o'clock"),
    ("the 21st and the 2nd", "the twenty-first and the second"),
    ("€11 and $12.50", "eleven euros and twelve dollars and fifty cents"),
    ("£1 and €2 million", "one pound and two million euros"),
    ("5 km and 10kg", "five kilometres and ten kilograms"),
    ("1 km at 20°C", "one kilometre at twenty degrees Celsius"),
    ("60 mph", "sixty miles per hour"),
    ("The FBI and NASA", "The F B I and NASA"),
    ("a USB stick", "a U S B stick"),
    ("10-20 people", "ten to twenty people"),
    ("-5 degrees", "minus five degrees"),
    ("the 1990s", "the nineteen nineties"),
    ("No. 5 said no.", "number five said no."),
    ("in 1999 at 4:30 & 7:05", "in nineteen ninety-nine at four thirty and seven oh five"),
    ("10% off", "ten percent off"),
]


@pytest.mark.parametrize(("text", "spoken"), SPOKEN)
def test_spoken_words(text, spoken):
    assert normalize_text(text) == spoken
    assert normalize_text(spoken) == spoken  # idempotent


@pytest.mark.parametrize(
    "text",
    ["", "   ", "\n\t", "\u200b\u200b", "\ufeff", "...", "!?", "\u200b \u200d"],
)
def test_nothing_to_say_is_refused(text):
    with pytest.raises(TextError, match="nothing to say"):
        check_text(text, name="input")


@pytest.mark.parametrize("text", ["hello\x00world", "\x00", "\x1b[31mred", "a\x7f"])
def test_control_characters_are_refused(text):
    with pytest.raises(TextError, match="control character"):
        check_text(text)


def test_clean_text_drops_zero_width_and_keeps_newlines():
    assert check_text("hel\u200blo\nthere\tfriend") == "hello\nthere\tfriend"
    assert clean_text("a\u00adb") == "ab"


def test_limit_is_named():
    with pytest.raises(TextError, match=r"longer than 4 characters \(5 given\)"):
        check_text("hello", limit=4)


def test_normalize_examples():
    assert (
        normalize_text("Dr. Smith paid $3.50 for 2 apples")
        == "doctor Smith paid three dollars and fifty cents for two apples"
    )
    assert normalize_text("10% off on the 3rd") == "ten percent off on the third"
    assert normalize_text("in 1999 at 4:30 & 7:05") == "in nineteen ninety-nine at four thirty and seven oh five"
    assert normalize_text("1,234.5 items") == "one thousand, two hundred and thirty-four point five items"
    assert normalize_text("£1 and €2 million") == "one pound and two million euros"


def test_plain_text_is_unchanged_and_idempotent():
    s = "hello world, how are you today?"
    assert normalize_text(s) == s
    once = normalize_text("Mr. Jones owes $1,000,000 (5%).")
    assert normalize_text(once) == once


def test_split_sentences_respects_limit():
    text = "One two three. Four five six! Seven? " * 10 + "word " * 80
    pieces = split_sentences(text, 40)
    assert all(len(p) <= 40 for p in pieces)
    assert " ".join(pieces).split() == text.split()
    assert split_sentences("Short one. Short two.", 100) == ["Short one. Short two."]


# ---------------------------------------------------------------- one sentence rule, one speaking rate


def test_one_sentence_rule_knows_abbreviations_and_decimals():
    text = "Dr. Smith paid 3.5 dollars. Then he left! Mr. J. Jones stayed on Baker St. near the park. I said no."
    assert split_sentences(text, pack=False) == [
        "Dr. Smith paid 3.5 dollars.",
        "Then he left!",
        "Mr. J. Jones stayed on Baker St. near the park.",
        "I said no.",
    ]
    assert split_complete("Hello Dr. Smith. How are you? I am f") == (["Hello Dr. Smith.", "How are you?"], "I am f")
    assert split_complete("Hello Dr. ") == ([], "Hello Dr. ")
    assert sentence_ends("A 3.5 m wall. ") == [len("A 3.5 m wall.")]


def test_every_splitter_uses_the_one_rule():
    from echoforge.agent.rag import split_sentences as rag_split
    from echoforge.agent.sentences import SentenceSplitter
    from echoforge.server.services.speech_session import sentences
    from echoforge.server.services.speech_session import split_complete as ws_split

    text = "Dr. Smith measured 3.5 litres of water in the lab. The result was clear to everyone there. "
    expected = ["Dr. Smith measured 3.5 litres of water in the lab.", "The result was clear to everyone there."]
    assert sentences(text) == expected
    assert ws_split(text)[0] == expected
    assert rag_split(text)[1] == expected
    splitter = SentenceSplitter(first_clause_chars=0)
    assert splitter.push(text) + splitter.flush() == expected


def test_one_speaking_rate_and_the_audio_limit_follows_the_text_limit():
    from echoforge.csm import scheduler
    from echoforge.server.services import synthesis
    from echoforge.text import CHARS_PER_SECOND

    text = " ".join(["Dr. Smith read the report twice before she called the team together."] * 60)[:4000]
    assert speech_seconds(text) == pytest.approx(len(text) / CHARS_PER_SECOND, rel=0.2)
    assert synthesis.estimate_seconds(text) == speech_seconds(text)
    assert not hasattr(synthesis, "CHARS_PER_SECOND") and not hasattr(synthesis, "_WORDS_PER_SECOND")
    assert getattr(scheduler, "_CHARS_PER_S", CHARS_PER_SECOND) == CHARS_PER_SECOND
    # A text within the character limit always gets more audio than it needs, at any speed.
    for speed in (0.25, 1.0, 4.0):
        assert audio_budget_ms(text, speed) / 1000 > 1.5 * speech_seconds(text, min(speed, 1.0))
    assert max_audio_seconds(4096) > 4096 / CHARS_PER_SECOND


def test_no_module_keeps_its_own_speaking_rate():
    """``echoforge.text.CHARS_PER_SECOND`` is the one rate: the CLI, the scheduler and the server follow it."""
    import re
    from pathlib import Path

    import echoforge
    from echoforge.cli import core
    from echoforge.csm import scheduler
    from echoforge.text import BUDGET_FACTOR, BUDGET_SLACK_S, CHARS_PER_SECOND

    assert not hasattr(core, "_WORDS_PER_SECOND") and not hasattr(scheduler, "_CHARS_PER_S")
    rate = re.compile(r"^\s*_?\w*(CHARS?|WORDS?)_PER_S\w*\s*(:[^=]+)?=\s*[\d.]+", re.MULTILINE)
    root = Path(echoforge.__file__).parent
    own = [str(p.relative_to(root)) for p in root.rglob("*.py") if p.name != "text.py" and rate.search(p.read_text())]
    assert own == []
    # The scheduler's per-piece cap is the piece's own audio budget at that rate.
    piece = "a" * 300
    expected_ms = int((BUDGET_FACTOR * 300 / CHARS_PER_SECOND + BUDGET_SLACK_S) * 1000)
    assert audio_budget_ms(piece, normalized=True) == expected_ms
