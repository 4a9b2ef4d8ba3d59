"""CSM weight files on disk: which complete weight sets a checkpoint directory holds, and their
tensor headers (names, shapes, dtypes) read without reading a tensor.

A set is one file (``model.safetensors``, ``ckpt.pt``) or an index plus every shard it lists;
``config.json``'s ``transformers_weights`` names the preferred one. :class:`TensorReader` reads single tensors
from a set when loading (safetensors handles, memory-mapped pickles).

Every failure raises :class:`CheckpointError` with one line naming the file and what to do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from echoforge.engines.base import EngineUnavailable

log = logging.getLogger("echoforge.csm")

# Single-file / index weight names, in the order they are tried (after config.json's transformers_weights).
_WEIGHT_NAMES = ("model.safetensors.index.json", "model.safetensors", "ckpt.pt", "model.pt", "pytorch_model.bin")
_SHARD_RE = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.safetensors$")


class CheckpointError(EngineUnavailable):
    """Weights, tokenizer or codec could not be found or do not fit the model."""


class WeightsNotFound(CheckpointError):
    """The model is not on this machine (path missing, or a hub repo not in the local cache)."""


def read_json(path: Path) -> dict:
    """A checkpoint's JSON file (config, index); unreadable -> :class:`CheckpointError`."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc}); re-download the checkpoint") from exc


@dataclass
class WeightSet:
    """One complete set of weight files: a single file, or an index and all its shards."""

    label: str  # e.g. "transformers.safetensors.index.json (2 shards)" or "model.safetensors"
    files: list[Path]
    index: Path | None = None


def _index_set(index: Path) -> WeightSet:
    wm = read_json(index).get("weight_map")
    if not isinstance(wm, dict) or not wm:
        raise CheckpointError(f"{index}: no weight_map in the index; re-download the checkpoint")
    shards = list(dict.fromkeys(sorted(wm.values())))
    for name in shards:
        f = index.parent / name
        if not f.is_file():
            raise CheckpointError(
                f"{f}: missing — {index.name} lists {len(shards)} shards and this one is not there; the download is "
                "incomplete: re-run `hf download` for the repo (it resumes) or copy the file"
            )
    n = len(shards)
    return WeightSet(f"{index.name} ({n} shard{'s' if n != 1 else ''})", [index.parent / s for s in shards], index)


def _inside(d: Path, name: str) -> Path:
    p = d / name
    try:
        ok = os.path.commonpath([os.path.abspath(d), os.path.abspath(p)]) == os.path.abspath(d)
    except ValueError:
        ok = False
    if not ok:
        raise CheckpointError(f"{d}/config.json: transformers_weights {name!r} must name a file inside the directory")
    return p


def weight_sets(d: Path, cfg: dict) -> list[WeightSet]:
    """Every weight set in directory ``d``, most preferred first (transformers_weights first).

    A set that is named but incomplete (an index whose shard is missing) is an error, not skipped.
    """
    sets: list[WeightSet] = []
    used: set[Path] = set()

    def add(ws: WeightSet) -> None:
        if not any(f in used for f in ws.files):
            sets.append(ws)
            used.update(ws.files)
            if ws.index is not None:
                used.add(ws.index)

    named = cfg.get("transformers_weights")
    if isinstance(named, str) and named:
        p = _inside(d, named)
        if p.is_file():
            add(_index_set(p) if named.endswith(".index.json") else WeightSet(p.name, [p]))
        else:
            log.info("%s: config.json names transformers_weights %r, which is not there", d, named)
    for name in _WEIGHT_NAMES:
        p = d / name
        if p.is_file() and p not in used:
            add(_index_set(p) if name.endswith(".index.json") else WeightSet(name, [p]))
    for p in sorted(d.glob("*.safetensors.index.json")):
        if p not in used:
            add(_index_set(p))
    groups: dict[tuple[str, int], dict[int, Path]] = {}
    for p in sorted(d.glob("*.safetensors")):
        if p in used:
            continue
        m = _SHARD_RE.match(p.name)
        if m:  # shards without an index: a set when all of them are there
            groups.setdefault((m["stem"], int(m["n"])), {})[int(m["i"])] = p
        else:
            add(WeightSet(p.name, [p]))
    for (stem, n), found in groups.items():
        missing = [f"{stem}-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1) if i not in found]
        if missing:
            raise CheckpointError(
                f"{d / missing[0]}: missing shard of {n} (no index either); the download is incomplete"
            )
        add(WeightSet(f"{stem}-*-of-{n:05d}.safetensors ({n} shards)", [found[i] for i in range(1, n + 1)]))
    return sets


@contextlib.contextmanager
def _weight_file(path: Path):
    """Turn a missing or unreadable weight file into one :class:`CheckpointError` line naming it."""
    try:
        yield
    except CheckpointError:
        raise
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: weight file missing; re-download the checkpoint") from exc
    except Exception as exc:
        raise CheckpointError(
            f"{path}: corrupt or unreadable weights ({exc.__class__.__name__}: {exc}); re-download it"
        ) from exc


def _load_pickle(path: Path) -> dict[str, Tensor]:
    """A torch checkpoint, memory-mapped when possible (tensors are not read until used)."""
    with _weight_file(path):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be mapped
            if "mmap" not in str(exc).lower() and "zip" not in str(exc).lower():
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


@dataclass(frozen=True)
class TensorInfo:
    name: str  # as stored in the file
    shape: tuple[int, ...]
    dtype: str
    file: Path


def read_headers(ws: WeightSet) -> dict[str, TensorInfo]:
    """Names, shapes and dtypes of every tensor in ``ws`` — safetensors headers only, no data read."""
    out: dict[str, TensorInfo] = {}
    for f in ws.files:
        if f.suffix == ".safetensors":
            with _weight_file(f), safe_open(str(f), framework="pt") as h:
                for k in h.keys():
                    sl = h.get_slice(k)
                    out[k] = TensorInfo(k, tuple(sl.get_shape()), str(sl.get_dtype()), f)
        else:
            for k, v in _load_pickle(f).items():
                out[k] = TensorInfo(k, tuple(v.shape), str(v.dtype).removeprefix("torch."), f)
    return out


class TensorReader:
    """Reads single tensors from the plan's files (safetensors handles / memory-mapped pickles)."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._st: dict[Path, Any] = {}
        self._pt: dict[Path, dict[str, Tensor]] = {}

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self._pt.clear()

    def get(self, info: TensorInfo) -> Tensor:
        f = info.file
        try:
            if f.suffix == ".safetensors":
                if f not in self._st:
                    self._st[f] = self._stack.enter_context(safe_open(str(f), framework="pt"))
                return self._st[f].get_tensor(info.name)
            if f not in self._pt:
                self._pt[f] = _load_pickle(f)
            return self._pt[f][info.name]
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"{f}: cannot read tensor {info.name!r} ({exc.__class__.__name__}: {exc}); the file is corrupt — re-download it"
            ) from exc
