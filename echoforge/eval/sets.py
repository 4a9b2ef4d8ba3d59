"""Evaluation test sets: ``echoforge/eval/sets/*.yaml`` by name, or a YAML path, normalised."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SETS_DIR = Path(__file__).parent / "sets"


DEFAULT_SET = "en_standard"


def _item(s: Any) -> dict[str, Any]:
    item = {"text": s, "category": "plain"} if isinstance(s, str) else dict(s)
    if not str(item.get("text", "")).strip():
        raise ValueError(f"test-set sentence without text: {s!r}")
    item.setdefault("category", "plain")
    return item


def load_set(name_or_path: str | Path) -> dict[str, Any]:
    """A test set by bundled name (``en_standard``) or YAML path, normalised.

    ``sentences`` become dicts (``text``, ``category`` and, for homographs, ``homograph`` /
    ``accept`` / ``reject``); ``conversation`` (one) and ``conversations`` (several) become a
    ``conversations`` list; per-engine ``voices`` may sit at the top or in a conversation.
    """
    p = Path(name_or_path)
    if not p.is_file():
        p = SETS_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise ValueError(
            f"test set {name_or_path!r} not found (bundled: {', '.join(sorted(f.stem for f in SETS_DIR.glob('*.yaml')))})"
        )
    data = yaml.safe_load(p.read_text()) or {}
    if not data.get("sentences"):
        raise ValueError(f"{p}: a test set needs a non-empty 'sentences' list")
    data.setdefault("name", p.stem)
    data["sentences"] = [_item(s) for s in data["sentences"]]
    convs = list(data.get("conversations") or [])
    if data.get("conversation"):
        convs.insert(0, data["conversation"])
    voices = dict(data.get("voices") or {})
    for i, c in enumerate(convs):
        c.setdefault("name", f"dialogue{i + 1}")
        c["voices"] = {**voices, **(c.get("voices") or {})}
    data["conversations"] = convs
    return data
