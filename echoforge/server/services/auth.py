"""API keys (hashed at rest) and a per-key / per-IP token-bucket rate limiter.

Keys made with ``echoforge keys create`` live in ``<data_dir>/api_keys.json`` as SHA-256
hashes (keys are 256-bit random tokens, so a fast hash is the right tool — no password
stretching needed); the plain key is shown once, at creation. Static keys from
``settings.server.api_keys`` are hashed in memory. The file is re-read when it changes, so
keys created or revoked while the server runs take effect at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY_PREFIX = "ef_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key id (never the key), or an IP address when auth is off."""

    id: str
    authenticated: bool


class ApiKeyStore:
    def __init__(self, data_dir: Path, static_keys: list[str] | None = None) -> None:
        self.path = Path(data_dir) / "api_keys.json"
        self._static = {hash_key(k): f"static-{i}" for i, k in enumerate(static_keys or []) if k}
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._entries: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- persistence
    def _load(self) -> list[dict[str, Any]]:
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime_ns
            except FileNotFoundError:
                self._entries, self._mtime = [], None
                return self._entries
            if mtime != self._mtime:
                self._entries = json.loads(self.path.read_text(encoding="utf-8")).get("keys", [])
                self._mtime = mtime
            return self._entries

    def _save(self, entries: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"keys": entries}, indent=2), encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(self.path)

    # ---------------------------------------------------------------- CLI side
    def create(self, name: str = "") -> tuple[str, dict[str, Any]]:
        """Make a key; returns ``(plain_key, entry)``. The plain key is not stored."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        entry = {
            "id": "k_" + secrets.token_hex(4),
            "name": name,
            "prefix": key[:7],
            "hash": hash_key(key),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "revoked": False,
        }
        entries = list(self._load())
        entries.append(entry)
        self._save(entries)
        return key, entry

    def list(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k != "hash"} for e in self._load()]

    def revoke(self, key_id: str) -> bool:
        entries = [dict(e) for e in self._load()]
        found = False
        for e in entries:
            if key_id in (e["id"], e["prefix"]) and not e["revoked"]:
                e["revoked"] = True
                found = True
        if found:
            self._save(entries)
        return found

    # ---------------------------------------------------------------- server side
    @property
    def required(self) -> bool:
        """Auth is on when any static key or any active stored key exists."""
        return bool(self._static) or any(not e.get("revoked") for e in self._load())

    def verify(self, key: str | None) -> str | None:
        """The key's id if ``key`` is valid, else None (constant-time comparisons)."""
        if not key:
            return None
        digest = hash_key(key)
        found = None
        for h, key_id in self._static.items():
            if hmac.compare_digest(h, digest):
                found = key_id
        for e in self._load():
            if hmac.compare_digest(e["hash"], digest) and not e.get("revoked"):
                found = e["id"]
        return found


class RateLimiter:
    """Token bucket: ``per_minute`` requests per identity, refilled continuously. 0 disables."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def hit(self, identity: str, cost: float = 1.0) -> float | None:
        """Take ``cost`` tokens; returns None if allowed, else seconds until it would be."""
        if self.capacity <= 0:
            return None
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(identity, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= cost:
                self._buckets[identity] = (tokens - cost, now)
                return None
            self._buckets[identity] = (tokens, now)
            if len(self._buckets) > 10_000:  # forget idle identities
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 120}
            return (cost - tokens) / self.rate
