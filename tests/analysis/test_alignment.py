from echoforge.analysis.alignment import align_words


def test_every_input_word_placed_in_order_and_missing_words_interpolated():
    recognized = [("Hello", 0.0, 0.4), ("world", 0.5, 0.9), ("end", 2.2, 2.5)]
    out = align_words("Hello, world big gap end.", recognized, duration_s=2.6)
    assert [w["word"] for w in out] == ["Hello,", "world", "big", "gap", "end."]
    assert out[0] == {"word": "Hello,", "start_s": 0.0, "end_s": 0.4, "interpolated": False}
    assert (out[1]["start_s"], out[1]["interpolated"]) == (0.5, False)
    assert [w["interpolated"] for w in out[2:4]] == [True, True]
    assert out[2]["start_s"] == 0.9 and out[3]["end_s"] == 2.2
    assert all(a["end_s"] <= b["start_s"] for a, b in zip(out, out[1:], strict=False))


def test_a_span_heard_as_other_words_shares_their_time_flagged():
    recognized = [("at", 0.0, 0.2), ("twenty", 0.3, 0.6), ("one", 0.6, 0.9), ("now", 1.0, 1.2)]
    out = align_words("at 21 now", recognized, duration_s=1.3)
    assert (out[1]["start_s"], out[1]["end_s"], out[1]["interpolated"]) == (0.3, 0.9, True)
    assert not out[0]["interpolated"] and not out[2]["interpolated"]


def test_nothing_recognized_spreads_over_the_audio():
    out = align_words("a bb", [], duration_s=3.0)
    assert [(w["start_s"], w["end_s"], w["interpolated"]) for w in out] == [(0.0, 1.0, True), (1.0, 3.0, True)]


def test_a_word_said_together_with_the_one_before_shares_its_span():
    """espeak-ng reports "in the" as one unit: "the" has no room of its own and borrows from "in"."""
    recognized = [("in", 1.0, 1.4), ("evening", 1.4, 2.0)]
    out = align_words("in the evening", recognized, duration_s=2.0)
    assert [(w["start_s"], w["interpolated"]) for w in out] == [(1.0, False), (out[1]["start_s"], True), (1.4, False)]
    assert 1.0 < out[1]["start_s"] < 1.4 and out[0]["end_s"] == out[1]["start_s"] and out[1]["end_s"] == 1.4
