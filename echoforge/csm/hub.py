"""Where CSM weights come from: a local path, or a hub repo id looked up in the local Hugging Face
cache first and downloaded (one weight set only) when downloads are allowed; and the one-line
messages for a gated model that is not on this machine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import huggingface_hub  # called as huggingface_hub.<fn> so tests can stand in for the hub
from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

from echoforge.csm.weights import CheckpointError, WeightsNotFound, read_json, weight_sets

__all__ = [
    "HUB_SIDE_FILES",
    "WeightsNotFound",
    "hf_offline",
    "hub_weight_patterns",
    "is_repo_id",
    "missing_weights_message",
    "resolve",
]

log = logging.getLogger("echoforge.csm")

# Besides one weight set, what a hub download of a CSM repo fetches.
HUB_SIDE_FILES = [
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
]
_TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "config.json",
]


def is_repo_id(s: str) -> bool:
    """``owner/name`` that is not a filesystem path."""
    return not s.startswith((".", "/", "~")) and s.count("/") == 1 and not Path(s).exists()


def hf_offline() -> bool:
    """Is ``HF_HUB_OFFLINE`` set (downloads disabled)?"""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def missing_weights_message(repo_id: str, why: str) -> str:
    """One line for a hub model that is not on this machine: it is gated, how to get it."""
    return (
        f"CSM weights {repo_id!r} are not on this machine ({why}). The repo is gated: accept the licence on "
        f"https://huggingface.co/{repo_id}, log in (`hf auth login`, older huggingface_hub: `huggingface-cli login`), "
        f"then `hf download {repo_id}` "
        "(or set csm.model to a local directory); with HF_HUB_OFFLINE unset and the hub reachable, EchoForge "
        "downloads it at start-up"
    )


def hub_weight_patterns(repo_id: str) -> list[str]:
    """The files of ONE weight set of a hub CSM repo (plus config/tokenizer files).

    Downloads ``config.json`` alone first: when it names ``transformers_weights`` that file
    (and, for an index, the index and every shard it lists) is the set — never the original
    ``model.safetensors`` / ``ckpt.pt`` next to it; otherwise ``model.safetensors`` (or its shards).
    """
    cfg = read_json(Path(huggingface_hub.hf_hub_download(repo_id, "config.json")))
    named = cfg.get("transformers_weights")
    if named:
        weights = [named]
        if named.endswith(".index.json"):
            index = read_json(Path(huggingface_hub.hf_hub_download(repo_id, named)))
            weights += sorted(set((index.get("weight_map") or {}).values()))
    else:
        weights = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
    return HUB_SIDE_FILES + [w for w in weights if w not in HUB_SIDE_FILES]


def _cached_dir_usable(d: Path, what: str) -> bool:
    if what == "tokenizer":
        return (d / "tokenizer.json").is_file()
    if not (d / "config.json").is_file():
        return False
    try:
        return bool(weight_sets(d, read_json(d / "config.json")))
    except CheckpointError:
        return False


def resolve(path_or_repo_id: str | os.PathLike, local_files_only: bool | None = None, what: str = "csm") -> Path:
    """Return a local directory or file for ``path_or_repo_id``.

    Local paths are used as they are. A hub repo id is looked up in the local Hugging Face
    cache first (no network); only if it is missing (or incomplete) there, ``HF_HUB_OFFLINE``
    is not set and ``local_files_only`` is not True is it downloaded — for ``what="csm"`` one
    weight set only (:func:`hub_weight_patterns`), for ``what="tokenizer"`` the tokenizer files.

    Raises:
        WeightsNotFound: not a local path and not (fully) in the cache while downloads are off.
        CheckpointError: the download failed (gated, not found, network), in one line.
    """
    p = Path(os.path.expanduser(str(path_or_repo_id)))
    if p.exists():
        return p
    repo_id = str(path_or_repo_id)
    if not is_repo_id(repo_id):
        raise WeightsNotFound(
            f"CSM model path {repo_id!r} does not exist (and is not a hub repo id like 'sesame/csm-1b')"
        )
    snapshot_download = huggingface_hub.snapshot_download
    cached: Path | None = None
    try:
        cached = Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    except Exception as exc:  # e.g. a half-written cache entry
        log.debug("local HF cache lookup for %s failed: %s", repo_id, exc)
    if cached is not None and _cached_dir_usable(cached, what):
        return cached
    if local_files_only or hf_offline():
        if cached is not None:
            return cached  # incomplete: inspection names exactly what is missing
        why = "HF_HUB_OFFLINE is set" if hf_offline() else "not in the local Hugging Face cache, downloads disabled"
        raise WeightsNotFound(missing_weights_message(repo_id, why))
    try:
        patterns = hub_weight_patterns(repo_id) if what == "csm" else _TOKENIZER_FILES
        d = Path(snapshot_download(repo_id, allow_patterns=patterns))
        if what == "csm" and not _cached_dir_usable(d, what):  # original layout shipped as ckpt.pt only
            d = Path(snapshot_download(repo_id, allow_patterns=patterns + ["ckpt.pt"]))
        return d
    except GatedRepoError as exc:
        raise CheckpointError(
            f"{repo_id!r} is gated: accept the licence on https://huggingface.co/{repo_id} and run "
            "log in (`hf auth login` / `huggingface-cli login`), or point csm.model at a local directory / ungated mirror"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise CheckpointError(
            f"hub repo {repo_id!r} not found (or gated/private and you are not logged in: `hf auth login` / `huggingface-cli login`)"
        ) from exc
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"could not download {repo_id!r}: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
            f"the repo is gated (accept the licence on its page, `hf auth login` / `huggingface-cli login`); set HF_HUB_OFFLINE=1 "
            "to use only the local cache"
        ) from exc

