r"""Training-data manifests: ``manifest.jsonl`` / ``manifest.csv`` rows -> :class:`TurnSpec`\ s.

One row per turn: ``audio`` (path, relative to the manifest; also ``audio_path`` / ``path`` /
``file``), ``speaker``, ``text``, optional ``start`` / ``end`` (seconds) and ``conversation``
(default: the audio file). Rows that cannot be used are returned as problems, never raised.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TurnSpec:
    """One turn to prepare (what the manifest or the segmenter says)."""

    audio: Path
    speaker: str
    text: str | None
    start: float | None
    end: float | None
    conversation: str
    order: int = 0


def _float(v: Any) -> float | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    return float(v)


def read_manifest(path: Path) -> tuple[list[TurnSpec], list[dict[str, str]]]:
    """Parse a JSONL or CSV manifest. Bad rows are returned as problems, not raised."""
    rows: list[dict[str, Any]] = []
    bad: list[dict[str, str]] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                bad.append({"item": f"{path.name}:{n}", "error": f"invalid JSON ({exc})"})
    specs = []
    for n, row in enumerate(rows):
        audio = row.get("audio") or row.get("audio_path") or row.get("path") or row.get("file")
        if not audio:
            bad.append({"item": f"{path.name}:row {n + 1}", "error": "no audio path"})
            continue
        audio_path = (path.parent / str(audio)).resolve()
        try:
            start, end = _float(row.get("start")), _float(row.get("end"))
        except ValueError:
            bad.append({"item": str(audio_path), "error": "start/end are not numbers"})
            continue
        conv = row.get("conversation") or row.get("conversation_id") or row.get("conv") or str(audio_path)
        text = row.get("text")
        specs.append(TurnSpec(audio_path, str(row.get("speaker", "0")), text if text and str(text).strip() else None,
                              start, end, str(conv), n))  # fmt: skip
    return specs, bad


def find_manifest(input_path: Path) -> Path | None:
    if input_path.is_file() and input_path.suffix.lower() in (".jsonl", ".json", ".csv"):
        return input_path
    for name in ("manifest.jsonl", "manifest.csv", "metadata.jsonl", "metadata.csv"):
        if (input_path / name).is_file():
            return input_path / name
    return None
