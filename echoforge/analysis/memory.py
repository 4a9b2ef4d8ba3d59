"""Voice memory: the short-term conversation window and long-term per-voice profiles.

* :class:`ConversationMemory` keeps the last turns as CSM context segments within a token
  budget (2048 for CSM-1B): the voice's reference prompt always stays, the oldest turns go first.
* :class:`VoiceProfile` keeps running statistics of how a voice sounds (pitch, energy, rate,
  emotion distribution) and a speaker embedding, updated after each turn with exponential decay
  — separate rates for prosodic memory (how it sounds: fast, 0.3) and semantic/identity memory
  (who it is: slow, 0.05) — persisted as JSON under ``data_dir/profiles/``. It detects drift
  (a new turn whose embedding no longer matches the profile) and picks the best reference turn.

Speaker embeddings come from :mod:`echoforge.analysis.speaker` (Resemblyzer d-vectors; the MFCC
fingerprint only as a labelled fallback). A profile records which backend made its embedding;
an embedding from another backend is not comparable, so the identity memory restarts from the
new turn instead of raising drift alarms. Drift threshold (cosine, :data:`DRIFT_THRESHOLD`):
with Resemblyzer, turns of one voice score 0.82-0.85 against each other (higher against the
running profile), different voices 0.40-0.61 and a pitch-shifted copy 0.56-0.65
(Piper + espeak voices, see docs/guide/training.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from echoforge.analysis.emotion import estimate_emotion
from echoforge.analysis.prosody import analyze_prosody
from echoforge.analysis.speaker import backend_name, embed_speaker
from echoforge.engines.base import Segment

_ID_RE = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
DRIFT_THRESHOLD = 0.75


_UPDATE_LOCK = threading.Lock()

class ConversationMemory:
    """Recent turns as context, kept under ``max_tokens`` by ``count_tokens(segment)``."""

    def __init__(self, count_tokens: Callable[[Segment], int], max_tokens: int = 2048, prompt: Segment | None = None):
        self.count_tokens = count_tokens
        self.max_tokens = max_tokens
        self.prompt = prompt
        self.turns: list[Segment] = []

    def add(self, segment: Segment) -> None:
        self.turns.append(segment)

    def context(self, reserve_tokens: int = 0) -> list[Segment]:
        """Prompt + the newest turns that fit in ``max_tokens - reserve_tokens`` (oldest dropped first)."""
        budget = self.max_tokens - reserve_tokens - (self.count_tokens(self.prompt) if self.prompt else 0)
        kept: list[Segment] = []
        for seg in reversed(self.turns):
            cost = self.count_tokens(seg)
            if cost > budget:
                break
            kept.append(seg)
            budget -= cost
        return ([self.prompt] if self.prompt else []) + kept[::-1]


@dataclass
class VoiceProfile:
    voice_id: str
    turns: int = 0
    pitch_mean_hz: float = 0.0
    energy_db: float = 0.0
    speaking_rate: float = 0.0
    emotions: dict[str, float] = field(default_factory=dict)
    embedding: list[float] = field(default_factory=list)
    best_turn: dict = field(default_factory=dict)
    embedding_backend: str = ""
    updated_at: float = 0.0
    prosodic_decay: float = 0.3
    semantic_decay: float = 0.05

    def comparable(self, embedding: np.ndarray, backend: str | None = None) -> bool:
        """The stored embedding exists and was made by the same backend (same size)."""
        if not self.embedding or len(self.embedding) != np.asarray(embedding).size:
            return False
        return not (backend and self.embedding_backend and backend != self.embedding_backend)

    def similarity(self, embedding: np.ndarray, backend: str | None = None) -> float:
        """Cosine to the profile's identity embedding (1.0 when there is nothing comparable yet)."""
        if not self.comparable(embedding, backend):
            return 1.0
        a, b = np.asarray(self.embedding), np.asarray(embedding)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))

    def update(self, prosody: dict, emotion: dict | None, embedding: np.ndarray, text: str = "",
               backend: str | None = None) -> float:  # fmt: skip
        """Fold one turn in; returns the turn's similarity to the profile *before* the update."""
        if self.embedding and not self.comparable(embedding, backend):
            self.embedding, self.best_turn = [], {}  # another encoder: restart the identity memory
        sim = self.similarity(embedding, backend)
        a, s = (1.0, 1.0) if self.turns == 0 else (self.prosodic_decay, self.semantic_decay)
        self.pitch_mean_hz = (1 - a) * self.pitch_mean_hz + a * prosody.get("pitch_mean_hz", 0.0)
        self.energy_db = (1 - a) * self.energy_db + a * prosody.get("energy_db", 0.0)
        self.speaking_rate = (1 - a) * self.speaking_rate + a * prosody.get("speaking_rate", 0.0)
        if emotion:
            self.emotions = {k: (1 - a) * v for k, v in self.emotions.items()}
            self.emotions[emotion["label"]] = self.emotions.get(emotion["label"], 0.0) + a
        old = np.asarray(self.embedding) if self.embedding else np.asarray(embedding)
        self.embedding = ((1 - s) * old + s * np.asarray(embedding)).astype(float).tolist()
        if backend:
            self.embedding_backend = backend
        if text and sim >= self.best_turn.get("similarity", -1.0):
            self.best_turn = {"text": text, "similarity": round(sim, 4)}
        self.turns += 1
        self.updated_at = time.time()
        return sim

    def drifted(self, embedding: np.ndarray, threshold: float = DRIFT_THRESHOLD, backend: str | None = None) -> bool:
        """True when a new turn no longer sounds like this voice (same-backend embeddings only)."""
        return self.turns > 0 and self.comparable(embedding, backend) and self.similarity(embedding, backend) < threshold


class ProfileStore:
    """Profiles persisted as JSON in ``data_dir/profiles/<voice_id>.json``."""

    def __init__(self, data_dir: Path):
        self.root = Path(data_dir) / "profiles"

    def _path(self, voice_id: str) -> Path:
        if not _ID_RE.match(voice_id):
            raise ValueError(f"invalid voice id {voice_id!r}")
        return self.root / f"{voice_id}.json"

    def load(self, voice_id: str) -> VoiceProfile | None:
        path = self._path(voice_id)
        if not path.is_file():
            return None
        known = set(VoiceProfile.__dataclass_fields__)
        return VoiceProfile(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})

    def save(self, profile: VoiceProfile) -> None:
        """Atomic: a unique temporary file per write, then rename (concurrent saves never interleave)."""
        import tempfile

        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(profile.voice_id)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{profile.voice_id}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(asdict(profile)))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def observe(self, voice_id: str, audio: np.ndarray, sample_rate: int, text: str = "") -> tuple[VoiceProfile, float]:
        """Analyse a turn of ``voice_id`` and update its profile; returns (profile, similarity)."""
        prosody = analyze_prosody(audio, sample_rate)
        emotion, embedding = estimate_emotion(prosody, text).to_dict(), embed_speaker(audio, sample_rate)
        with _UPDATE_LOCK:  # read-modify-write: concurrent turns of one voice must not lose updates
            profile = self.load(voice_id) or VoiceProfile(voice_id)
            sim = profile.update(prosody.to_dict(), emotion, embedding, text, backend=backend_name())
            self.save(profile)
        return profile, sim
