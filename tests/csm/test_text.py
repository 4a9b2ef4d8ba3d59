from echoforge.text import normalize_text, split_sentences


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
