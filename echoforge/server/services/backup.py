"""``echoforge backup`` / ``echoforge restore``: voices, tasks, API keys and config in one tar.gz.

Layout of the archive::

    manifest.json              version, date, what is inside
    voices/<id>/...            user voices (reference + metadata; prompt caches are skipped)
    tasks.sqlite3              a consistent copy (SQLite's online backup API) — sqlite backend only
    results/<task>.bin         finished audio (only with ``include_results``)
    api_keys.json              hashed API keys
    config/echoforge.yaml      the YAML config file, when there is one
    config/settings.json       the effective settings, secrets redacted (for reference)

Restoring never writes outside the data dir (or the config file), and refuses archive members
with absolute paths, ``..`` or links.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echoforge import __version__
from echoforge.config import DEFAULT_CONFIG_FILE

if TYPE_CHECKING:
    from echoforge.config import Settings

_ALLOWED_TOP = ("manifest.json", "voices", "tasks.sqlite3", "results", "api_keys.json", "config")


def config_path() -> Path:
    return Path(os.environ.get("ECHOFORGE_CONFIG", DEFAULT_CONFIG_FILE))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def create_backup(settings: Settings, target: Path, *, include_results: bool = False) -> dict[str, Any]:
    """Write the archive; returns the manifest."""
    data_dir = settings.data_dir
    manifest: dict[str, Any] = {
        "echoforge_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "contents": [],
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tar:
        voices = data_dir / "voices"
        if voices.is_dir():
            count = 0
            for folder in sorted(p for p in voices.iterdir() if p.is_dir() and not p.name.startswith(".")):
                tar.add(folder, arcname=f"voices/{folder.name}")
                count += 1
            manifest["contents"].append(f"voices ({count})")
        db = data_dir / "tasks.sqlite3"
        if db.is_file():
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / "tasks.sqlite3"
                src, dst = sqlite3.connect(db), sqlite3.connect(copy)
                with dst:
                    src.backup(dst)
                src.close()
                dst.close()
                tar.add(copy, arcname="tasks.sqlite3")
            manifest["contents"].append("tasks")
        if include_results and (data_dir / "results").is_dir():
            tar.add(data_dir / "results", arcname="results")
            manifest["contents"].append("results")
        if (data_dir / "api_keys.json").is_file():
            tar.add(data_dir / "api_keys.json", arcname="api_keys.json")
            manifest["contents"].append("api_keys")
        if config_path().is_file():
            tar.add(config_path(), arcname="config/echoforge.yaml")
            manifest["contents"].append("config")
        _add_bytes(tar, "config/settings.json", json.dumps(settings.redacted(), indent=2).encode())
        _add_bytes(tar, "manifest.json", json.dumps(manifest, indent=2).encode())
    return manifest


def _safe_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = []
    for m in tar.getmembers():
        parts = Path(m.name).parts
        if m.name.startswith("/") or ".." in parts or not parts or parts[0] not in _ALLOWED_TOP:
            raise ValueError(f"refusing unsafe or unknown archive member {m.name!r}")
        if not (m.isfile() or m.isdir()):
            raise ValueError(f"refusing archive member {m.name!r}: only files and folders are allowed")
        members.append(m)
    return members


def restore_backup(settings: Settings, source: Path, *, force: bool = False) -> dict[str, Any]:
    """Unpack an archive made by :func:`create_backup` into the data dir (and the config file)."""
    if not source.is_file():
        raise FileNotFoundError(f"backup file not found: {source}")
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        tar = tarfile.open(source, "r:gz")
    except (tarfile.TarError, OSError) as exc:
        raise ValueError(f"{source} is not an EchoForge backup (tar.gz): {exc}") from None
    with tar:
        members = _safe_members(tar)
        names = {m.name for m in members}
        if "manifest.json" not in names:
            raise ValueError(f"{source} has no manifest.json; it is not an EchoForge backup")
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        if not force:
            clashes = [
                n
                for n in names
                if n.startswith(("voices/", "tasks.sqlite3", "api_keys.json")) and (data_dir / n).is_file()
            ]
            if clashes:
                raise ValueError(
                    f"{len(clashes)} file(s) would be overwritten in {data_dir} (e.g. {clashes[0]}); use --force"
                )
        for m in members:
            if m.name.startswith("config/") or m.name == "manifest.json":
                continue
            if m.name == "tasks.sqlite3":  # drop stale WAL files of the old database
                for suffix in ("-wal", "-shm"):
                    (data_dir / f"tasks.sqlite3{suffix}").unlink(missing_ok=True)
            tar.extract(m, data_dir, filter="data")
        if "config/echoforge.yaml" in names:
            dest = config_path()
            if dest.exists() and not force:
                manifest["config_skipped"] = f"{dest} exists (use --force to overwrite)"
            else:
                dest.write_bytes(tar.extractfile("config/echoforge.yaml").read())  # type: ignore[union-attr]
                manifest["config_restored_to"] = str(dest)
    return manifest
