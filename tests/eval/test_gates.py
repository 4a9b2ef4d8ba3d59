"""Sanity gates of the evaluation: signal checks, flagged engines rank last, sample sizes, the test set."""

from __future__ import annotations

import math

import numpy as np

from echoforge.eval.metrics import MIN_N, encoder_check, homograph_correct
from echoforge.eval.quality import check_signal
from echoforge.eval.report import markdown, rank
from echoforge.eval.sets import load_set


def test_signal_check_tells_speech_from_noise_and_silence():
    from echoforge.config import load_settings
    from echoforge.engines import SynthesisRequest, create_engine

    espeak = create_engine(load_settings(), "espeak")
    speech = espeak.synthesize(SynthesisRequest(text="Good morning, how are you today?"))
    assert check_signal(speech, espeak.sample_rate).verdict == "speech"
    rng = np.random.default_rng(0)
    assert check_signal((0.1 * rng.standard_normal(32000)).astype(np.float32), 16000).verdict == "noise"
    assert check_signal(np.zeros(32000, np.float32), 16000).verdict == "silence"
    assert check_signal(np.zeros(10, np.float32), 16000).verdict == "silence"


def _res(name, wer, sim, cons, rtf, flags=(), n=20):
    return {"engine": name, "available": True, "is_fallback": True, "flags": list(flags),
            "metrics": {"wer": wer, "speaker_sim": sim, "consistency": cons, "rtf": rtf, "ttfa_s": 0.1,
                        "separation": 0.1, "emotion_score": 0.5, "homograph_acc": 1.0,
                        "n": {"wer": n, "speaker_sim": n, "consistency": n, "separation": n, "rtf": n,
                              "emotion_score": n, "homograph_acc": n}}}  # fmt: skip


def test_flagged_engines_rank_last_whatever_their_other_scores():
    noise = _res("noise", 1.0, 1.0, 1.0, 0.0001, ["output is noise (9/9 utterances)"])
    mumble = _res("mumble", 0.95, 0.99, 0.99, 0.001, ["unintelligible (WER 95% >= 90%)"])
    ranked = rank([noise, _res("a", 0.30, 0.8, 0.8, 0.5), mumble, _res("b", 0.05, 0.7, 0.7, 0.9),
                   {"engine": "gone", "available": False, "error": "x"}])  # fmt: skip
    assert [r["engine"] for r in ranked] == ["a", "b", "noise", "mumble", "gone"]
    assert [r.get("rank") for r in ranked] == [1, 2, 3, 4, None]


def test_rank_orders_by_mean_rank_and_ignores_insufficient_metrics():
    a, b, c = _res("a", 0.30, 0.9, 0.9, 0.1), _res("b", 0.05, 0.8, 0.8, 0.5), _res("c", 0.05, 0.95, 0.95, 0.05)
    ranked = rank([a, b, c])
    assert [r["engine"] for r in ranked] == ["c", "a", "b"] and ranked[0]["ranks"]["wer"] == 1.5  # tie with b
    # With too few dialogue pairs, cpSIM is not ranked at all.
    x, y = _res("x", 0.1, 0.9, 0.1, 0.1), _res("y", 0.1, 0.9, 0.99, 0.1)
    x["metrics"]["n"]["consistency"] = y["metrics"]["n"]["consistency"] = MIN_N["consistency"] - 1
    ranked = rank([x, y])
    assert all("consistency" not in r["ranks"] for r in ranked)


def test_report_prints_sample_sizes_and_insufficient_data():
    r = _res("a", 0.1, 0.9, 0.9, 0.1)
    r["metrics"]["n"]["consistency"] = 2
    r["metrics"]["wer_by_category"] = {"plain": {"wer": 0.0, "n": 12}, "long": {"wer": 0.2, "n": 3}}
    report = {"set": "s", "asr": "whisper", "speaker_backend": "resemblyzer", "n_sentences": 15, "n_turns": 4,
              "results": rank([r]), "speaker_encoder": encoder_check([])}  # fmt: skip
    md = markdown(report)
    assert "10.0% (n=20)" in md and "insufficient data (n=2<6)" in md
    assert "| plain | long |" in md and "0.0% (n=12)" in md and "20.0% (n=3, insufficient data)" in md
    assert "insufficient data" in md.split("Speaker encoder")[1].splitlines()[0]


def test_encoder_check_compares_same_voice_with_other_engines_and_pitch_shift():
    e = np.eye(4, dtype=np.float32)
    same = [e[0] + 0.1 * e[1], e[0] + 0.1 * e[2]] * 3
    other = [e[3] + 0.1 * e[1], e[3] + 0.1 * e[2]] * 3
    res = [{"engine": "p", "available": True, "flags": [], "_speaker": {"sentences": same, "shifted": e[2]}},
           {"engine": "q", "available": True, "flags": [], "_speaker": {"sentences": other, "shifted": e[1]}},
           {"engine": "noise", "available": True, "flags": ["noise"], "_speaker": {"sentences": same}}]  # fmt: skip
    out = encoder_check(res)
    assert out["verdict"] == "pass" and out["same"] > out["different_engine"] and out["same"] > out["pitch_shifted"]
    assert out["n_different_engine"] == 36  # the flagged engine is left out
    mixed = [e[0], e[1], e[2]] * 2  # an encoder that does not see voices: within = across engines
    res[0]["_speaker"]["sentences"] = res[1]["_speaker"]["sentences"] = mixed
    assert encoder_check(res)["verdict"] == "FAIL"


def test_homograph_expectations():
    item = {"text": "Please wind the clock before you go to bed.", "homograph": "wind", "accept": ["wind"],
            "reject": ["win", "wine"]}  # fmt: skip
    assert homograph_correct(item, "Please wind the clock before you go to bed.")
    assert not homograph_correct(item, "Please win the clock before you go to bed.")
    assert not homograph_correct(item, "Please wine the clock, wind it.")
    desert = {"text": "The camel walked across the desert.", "homograph": "desert", "accept": ["desert"], "reject": ["dessert"]}
    assert not homograph_correct(desert, "The camel walked across the dessert.")


def test_standard_set_is_a_real_test_set():
    s = load_set("en_standard")
    cats = {}
    for item in s["sentences"]:
        cats.setdefault(item["category"], []).append(item)
    assert len(s["sentences"]) >= 60
    assert set(cats) == {"plain", "numbers", "names", "homographs", "questions", "long"}
    assert all(len(v) >= 5 for v in cats.values())
    homos = cats["homographs"]
    assert {h["homograph"] for h in homos} >= {"read", "record", "wind", "lead"}
    assert all(h["accept"] and h["homograph"] in h["text"].lower() for h in homos)
    assert all(len(item["text"].split()) >= 25 for item in cats["long"])
    assert len(s["conversations"]) >= 3
    for c in s["conversations"]:
        assert {t["speaker"] for t in c["turns"]} == {0, 1} and len(c["turns"]) >= 6
        assert c["voices"]["espeak"] == ["en-us", "en-us+f3"]
    for name in ("en_basic", "en_quick"):  # the older sets still load (strings become "plain" items)
        old = load_set(name)
        assert old["sentences"][0]["category"] == "plain" and len(old["conversations"]) == 1
    assert not math.isnan(MIN_N["wer"])
