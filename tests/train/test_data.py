"""`echoforge data prepare` on real synthetic speech (Piper + espeak-ng), then `echoforge train` on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from train_helpers import build_tiny_csm

from echoforge.audio import save_audio
from echoforge.train.dataset import MAX_CONTEXT_TURNS, ShardedDataset, build_rows
from echoforge.train.manifest import read_manifest
from echoforge.train.preparation import prepare

SR = 24_000


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """A folder of conversations: per-turn files, one file cut by start/end, one long recording
    for VAD + Whisper, a corrupt file and a missing one. Returns (folder, manifest rows)."""
    from echoforge.audio import resample
    from echoforge.config import load_settings
    from echoforge.engines import SynthesisRequest, create_engine

    settings = load_settings()
    piper, espeak = create_engine(settings, "piper"), create_engine(settings, "espeak")

    def say(engine, text: str) -> np.ndarray:
        return resample(engine.synthesize(SynthesisRequest(text=text, voice=None)), engine.sample_rate, SR)

    d = tmp_path_factory.mktemp("speech")
    rows = []
    lines = [("alice", piper, "Good morning, how are you today?"), ("bob", espeak, "I am fine, thanks."),
             ("alice", piper, "The quick brown fox jumps over the lazy dog.")]  # fmt: skip
    for i, (spk, eng, text) in enumerate(lines):
        save_audio(d / f"a{i}.wav", say(eng, text), SR)
        rows.append({"audio": f"a{i}.wav", "speaker": spk, "text": text, "conversation": "conv-a"})
    # conv-b: two turns in one file, cut by start/end.
    x, y = say(piper, "Yes, this is a test."), say(espeak, "No, it is speech synthesis.")
    save_audio(d / "b.wav", np.concatenate([x, np.zeros(SR // 2, np.float32), y]), SR)
    rows.append(
        {
            "audio": "b.wav",
            "speaker": "alice",
            "text": "Yes, this is a test.",
            "start": 0,
            "end": x.size / SR,
            "conversation": "conv-b",
        }
    )
    rows.append({"audio": "b.wav", "speaker": "bob", "text": "No, it is speech synthesis.", "start": x.size / SR + 0.5,
                 "end": x.size / SR + 0.5 + y.size / SR, "conversation": "conv-b"})  # fmt: skip
    # conv-c: one good turn, a corrupt file and a missing one.
    save_audio(d / "c0.wav", say(espeak, "One two three four five."), SR)
    (d / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage, not audio" * 10)
    rows += [{"audio": "c0.wav", "speaker": "bob", "text": "One two three four five.", "conversation": "conv-c"},
             {"audio": "broken.wav", "speaker": "alice", "text": "hello", "conversation": "conv-c"},
             {"audio": "missing.wav", "speaker": "alice", "text": "hello", "conversation": "conv-c"}]  # fmt: skip
    # conv-d: a long recording without text or times -> silero-vad turns + Whisper transcripts.
    long = [say(piper, "Good morning everyone."), np.zeros(SR, np.float32), say(piper, "Thank you very much.")]
    save_audio(d / "long.wav", np.concatenate(long), SR)
    rows.append({"audio": "long.wav", "speaker": "carol", "conversation": "conv-d"})
    (d / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return d, rows


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_csm(tmp_path_factory.mktemp("csm"))


@pytest.fixture(scope="module")
def prepared(speech, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    report = prepare(speech[0], out, model_dir, val_fraction=0.3, max_turn_s=2.5)
    return out, report


def test_prepare_writes_shards_and_reports_bad_files(prepared, speech):
    out, report = prepared
    bad = {b["item"].split("/")[-1]: b["error"] for b in report.bad}
    assert set(bad) == {"broken.wav", "missing.wav"}, report.bad
    assert "not found" in bad["missing.wav"]
    index = json.loads((out / "index.json").read_text())
    assert {"alice", "bob", "carol"} <= set(index["speakers"])
    stats = index["stats"]
    assert stats["train"]["conversations"] + stats["val"]["conversations"] == 4
    assert stats["val"]["conversations"] >= 1 and stats["train"]["conversations"] >= 1
    md = (out / "stats.md").read_text()
    assert "broken.wav" in md and "| train |" in md
    # Split by conversation: no conversation in both splits.
    convs = {s: {json.loads(line)["conversation"] for n in index["shards"][s] for line in (out / f"{n}.meta.jsonl").open()}
             for s in ("train", "val")}  # fmt: skip
    assert not convs["train"] & convs["val"]
    # Memory-mapped arrays with the documented shapes; frames match durations (12.5 Hz).
    for split in ("train", "val"):
        for name in index["shards"][split]:
            codes = np.load(out / f"{name}.codes.npy", mmap_mode="r")
            turns = np.load(out / f"{name}.turns.npy", mmap_mode="r")
            prosody = np.load(out / f"{name}.prosody.npy", mmap_mode="r")
            assert isinstance(codes, np.memmap) and codes.dtype == np.int16 and codes.shape[1] == 32
            assert turns[:, 1].sum() == codes.shape[0] and prosody.shape == (
                turns.shape[0],
                len(index["prosody_features"]),
            )
            meta = [json.loads(line) for line in (out / f"{name}.meta.jsonl").open()]
            for row, m in zip(turns, meta, strict=True):
                if m["start"] is not None:
                    assert abs(row[1] - (m["end"] - m["start"]) * 12.5) <= 1.5


def test_vad_and_whisper_segment_long_recordings(prepared):
    out, _ = prepared
    index = json.loads((out / "index.json").read_text())
    metas = [
        json.loads(line)
        for s in ("train", "val")
        for n in index["shards"][s]
        for line in (out / f"{n}.meta.jsonl").open()
    ]
    long = [m for m in metas if m["conversation"] == "conv-d"]
    assert len(long) == 2, long  # two utterances separated by a second of silence
    assert "morning" in long[0]["text"].lower() and "thank" in long[1]["text"].lower()
    assert long[0]["end"] <= long[1]["start"]


def test_samples_have_context_and_build_rows(prepared):
    out, _ = prepared
    ds = ShardedDataset(out, "train")
    assert len(ds) >= 2
    for i in range(len(ds)):
        segs = ds[i]
        assert 1 <= len(segs) <= MAX_CONTEXT_TURNS + 1
        for text, codes in segs:
            assert text[0] == 0 and text[-1] == 1  # <bos> ... <eos> of the tiny tokenizer
            assert codes.shape[1] == 32 and codes.max() < 2048
        tokens, mask, scored = build_rows(segs, 32, 2048)
        n_audio = sum(c.shape[0] + 1 for _, c in segs)
        assert scored.sum() == n_audio == mask[:, :32].all(1).sum()
        assert not (mask[:, 32] & mask[:, :32].any(1)).any()  # a row is text or audio, never both
        only_target = build_rows(segs, 32, 2048, loss_on_context=False)[2]
        assert only_target.sum() == segs[-1][1].shape[0] + 1
    # Context is dropped oldest-first to fit the window; the target always stays.
    segs = max((ds[i] for i in range(len(ds))), key=len)
    if len(segs) > 1:
        t_len = segs[-1][0].size + segs[-1][1].shape[0] + 1
        tokens, _, _ = build_rows(segs, 32, t_len + 1)
        assert tokens.shape[0] == t_len


def test_codes_are_cached(prepared, speech, model_dir, monkeypatch):
    out, first = prepared

    class NoCodec:
        def encode(self, audio):
            raise AssertionError("Mimi should not run again: codes are cached")

    class NoWhisper:
        def transcribe(self, *a, **k):
            raise AssertionError("no transcription on cached text rows")

    report = prepare(speech[0], out, model_dir, val_fraction=0.3, max_turn_s=2.5, codec=NoCodec(), whisper=NoWhisper())
    assert report.stats == first.stats
    assert len(report.bad) == 2


def test_cli_prepare_and_train_end_to_end(prepared, speech, model_dir, tmp_path):
    from typer.testing import CliRunner

    from echoforge.cli import app

    torch.set_num_threads(1)
    out = prepared[0]
    runner = CliRunner()
    res = runner.invoke(app, ["data", "prepare", str(speech[0]), str(out), "--model", str(model_dir), "--val-fraction", "0.3",
                              "--max-turn-s", "2.5"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "skipped 2 bad item" in res.output and "broken.wav" in res.output
    cfg = {"out_dir": str(tmp_path / "run"), "device": "cpu", "model": {"init_from": str(model_dir)},
           "data": {"path": str(out), "max_seq_len": 1024},
           "optim": {"lr": 1e-3, "warmup_steps": 1, "max_steps": 2, "batch_size": 2}, "eval_batches": 1}  # fmt: skip
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["train", str(tmp_path / "cfg.yaml"), "loss.decoder_weight=1.0"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "final" / "tokenizer.json").is_file()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2] and any("val_loss" in r for r in log)


def test_csv_manifest_and_bad_rows(tmp_path):
    (tmp_path / "m.csv").write_text(
        "audio,speaker,text,start,end,conversation\n"
        "x.wav,anna,Hi there,0.0,1.5,c1\n"
        "x.wav,ben,Hello,1.7,2.9,c1\n"
        ",ben,no audio,,,c2\n"
        "y.wav,ben,bad times,abc,1,c2\n"
        "z.wav,carl,,,,\n"
    )
    specs, bad = read_manifest(tmp_path / "m.csv")
    assert [(s.speaker, s.text, s.start, s.end, s.conversation) for s in specs[:2]] == [
        ("anna", "Hi there", 0.0, 1.5, "c1"),
        ("ben", "Hello", 1.7, 2.9, "c1"),
    ]
    assert specs[2].text is None and specs[2].conversation == str(
        tmp_path / "z.wav"
    )  # default: one file, one conversation
    assert len(bad) == 2 and "no audio path" in bad[0]["error"] and "not numbers" in bad[1]["error"]
