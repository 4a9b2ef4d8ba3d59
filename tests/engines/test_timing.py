"""Word timings per engine: espeak-ng's own word events, the DTW aligner, the incremental WordTimer."""

from __future__ import annotations

import numpy as np
import pytest

from echoforge.analysis.alignment import align_words
from echoforge.engines import espeak_events
from echoforge.engines.base import BaseEngine, SynthesisRequest
from echoforge.engines.espeak import EspeakEngine
from echoforge.engines.timing import DtwAligner, WordTimer, dtw_path, stream_timed, synthesize_timed

pytestmark = pytest.mark.skipif(not espeak_events.available(), reason="libespeak-ng (espeak-ng package) not installed")

TEXT = "Please open the window, and let the fresh air in. It is 21 degrees today!"


def _ordered(words: list[dict]) -> None:
    for a, b in zip(words, words[1:], strict=False):
        assert a["start_s"] <= a["end_s"] <= b["start_s"] <= b["end_s"]


def test_espeak_reports_every_word_in_order_inside_its_audio():
    audio, words = synthesize_timed(EspeakEngine(), SynthesisRequest(text=TEXT))
    assert [w["word"] for w in words] == TEXT.split()
    _ordered(words)
    assert words[-1]["end_s"] <= audio.size / EspeakEngine.sample_rate + 1e-3
    # "21" is spoken "twenty-one": still one input word, placed (espeak knows where the number is).
    assert next(w for w in words if w["word"] == "21")["end_s"] > next(w for w in words if w["word"] == "21")["start_s"]


def test_espeak_timed_audio_is_the_speech_of_the_plain_path():
    """The library path (with word events) speaks as the binary does, sentence by sentence (the
    binary only adds a longer silence after each sentence)."""
    engine = EspeakEngine()
    request = SynthesisRequest(text=TEXT)
    plain = list(engine.stream(request))
    timed = [chunk for chunk, _ in stream_timed(engine, request) if chunk.size]
    assert len(plain) == len(timed) == 2
    for a, b in zip(plain, timed, strict=True):
        loud_a, loud_b = np.flatnonzero(np.abs(a) > 0.01), np.flatnonzero(np.abs(b) > 0.01)
        assert abs(loud_a[0] - loud_b[0]) < 0.02 * a.size and abs(loud_a[-1] - loud_b[-1]) < 0.02 * a.size


def test_stream_timed_words_come_with_their_sentence_and_all_come_once():
    items = list(stream_timed(EspeakEngine(), SynthesisRequest(text=TEXT)))
    audio_items = [words for chunk, words in items if chunk.size]
    assert len(audio_items) == 2  # two sentences, two chunks
    assert [w["word"] for w in audio_items[0]][0] == "Please"  # the first sentence's words with its audio
    assert [w["word"] for _, ws in items for w in ws] == TEXT.split()


def test_dtw_aligner_finds_espeak_words_in_another_voice_and_pace():
    """Audio in a voice/pace other than the aligner's template: starts within 40 ms of espeak's own events."""
    engine = EspeakEngine()
    audio, truth = synthesize_timed(engine, SynthesisRequest(text=TEXT, voice="en-gb+f4", speed=1.3))
    aligned = align_words(TEXT, DtwAligner()(audio, engine.sample_rate, TEXT), audio.size / engine.sample_rate)
    errors = [abs(a["start_s"] - t["start_s"]) for a, t in zip(aligned, truth, strict=True) if not t["interpolated"]]
    assert np.median(errors) <= 0.04 and max(errors) <= 0.15
    _ordered(aligned)


def test_dtw_path_is_monotonic_and_spans_both_sequences():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    y = np.repeat(x, 2, axis=0)  # y is x at half speed
    path = dtw_path(x, y)
    assert tuple(path[0]) == (0, 0) and tuple(path[-1]) == (29, 59)
    assert (np.diff(path, axis=0) >= 0).all()
    assert all(j // 2 == i for i, j in path)  # each x frame pairs with its two copies


class _SentenceEngine(BaseEngine):
    """One chunk per sentence, 1 s each (what Piper does)."""

    name, sample_rate, is_fallback, chunks_are_sentences = "fake", 1000, True, True

    def stream(self, request):
        for _ in range(2):
            yield np.ones(1000, dtype=np.float32)


def test_word_timer_aligns_each_sentence_chunk_as_it_comes():
    seen: list[tuple[str, int]] = []

    def recognizer(audio, sr, text):  # "hears" the chunk's own sentence, evenly spread over it
        seen.append((text, audio.size))
        words = text.split()
        return [(w, i / len(words), (i + 1) / len(words)) for i, w in enumerate(words)]

    items = list(stream_timed(_SentenceEngine(), SynthesisRequest(text="One two. Three four."), recognizer=recognizer))
    assert seen == [("One two.", 1000), ("Three four.", 1000)]
    assert [[w["word"] for w in ws] for _, ws in items] == [["One", "two."], ["Three", "four."], []]
    assert items[1][1][0] == {"word": "Three", "start_s": 1.0, "end_s": 1.5, "interpolated": False}


def test_word_timer_without_recognized_words_still_returns_every_word_at_the_end():
    timer = WordTimer("a bb ccc", 100, recognizer=lambda audio, sr, text: [])
    assert timer.add(np.zeros(300, dtype=np.float32)) == []
    words = timer.finish()
    assert [w["word"] for w in words] == ["a", "bb", "ccc"] and all(w["interpolated"] for w in words)
    assert words[-1]["end_s"] == 3.0


@pytest.mark.integration
def test_whisper_aligner_places_the_words_of_espeak_speech():
    pytest.importorskip("faster_whisper")
    from echoforge.engines.timing import WhisperAligner

    engine = EspeakEngine()
    text = "Good morning, how are you today?"
    audio, truth = synthesize_timed(engine, SynthesisRequest(text=text))
    heard = WhisperAligner()(audio, engine.sample_rate, text)
    words = align_words(text, heard, audio.size / engine.sample_rate)
    assert [w["word"] for w in words] == text.split()
    _ordered(words)
    assert sum(w["interpolated"] for w in words) <= 1
    # Whisper tiny's word times are coarse (BENCHMARKS.md: median 82 ms): within 300 ms here.
    assert max(abs(w["start_s"] - t["start_s"]) for w, t in zip(words, truth, strict=True)) < 0.3
