from echoforge.captions import build_cues, to_srt, to_vtt, words_heard


def timed(text, step=0.3):
    return [
        {"word": w, "start_s": i * step, "end_s": i * step + step * 0.8, "interpolated": False}
        for i, w in enumerate(text.split())
    ]


def test_cues_respect_line_and_cue_limits_and_keep_every_word():
    words = timed(
        "The quick brown fox jumps over the lazy dog, then it runs far away into the deep dark "
        "woods where nobody can find it at all. Done."
    )
    cues = build_cues(words)
    assert all(len(c.lines) <= 2 and all(len(line) <= 42 for line in c.lines) for c in cues)
    assert " ".join(" ".join(c.lines) for c in cues).split() == [w["word"] for w in words]
    assert cues[-1].lines == ("Done.",)  # a sentence end closes a cue
    assert any(c.lines[-1].endswith("dog,") for c in cues)  # a full cue is cut at the phrase boundary
    assert all(a.end_s <= b.start_s for a, b in zip(cues, cues[1:], strict=False))


def test_srt_and_vtt_format():
    words = timed("Hello there. General Kenobi.", step=1.0)
    assert to_srt(words) == (
        "1\n00:00:00,000 --> 00:00:01,800\nHello there.\n\n2\n00:00:02,000 --> 00:00:03,800\nGeneral Kenobi.\n"
    )
    assert to_vtt(words).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.800\nHello there.\n")
    assert to_srt([]) == "" and to_vtt([]) == "WEBVTT\n\n"


def test_words_heard_cuts_at_the_middle_of_a_word():
    words = timed("one two three", step=1.0)  # middles at 0.4, 1.4, 2.4
    assert [w["word"] for w in words_heard(words, 1.5)] == ["one", "two"]
    assert words_heard(words, 0.1) == []
