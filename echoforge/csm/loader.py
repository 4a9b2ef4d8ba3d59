"""Find, check and load CSM checkpoints into :class:`echoforge.csm.model.CSM`.

Two layouts are understood, told apart by the tensor *names* (never by file names or
``model_type`` alone):

* **transformers** (``CsmForConditionalGeneration``): ``backbone_model.*``, ``depth_decoder.*``,
  ``embed_text_tokens``, ``lm_head``, with the Mimi codec bundled under ``codec_model.*``.
* **original Sesame** (torchtune names): ``backbone.layers.N.attn.q_proj`` … ``sa_norm.scale``,
  ``text_embeddings``, ``audio_embeddings``, ``projection``, ``codebook0_head``, ``audio_head``;
  no codec (Mimi comes from ``csm.codec`` / ``kyutai/mimi``). Torchtune's RoPE rotates
  interleaved pairs while ours rotates halves, so q/k rows are permuted on load (and back in
  :func:`export_sesame_state_dict`).

The real ``sesame/csm-1b`` repository holds **both**: ``config.json`` (a transformers
``CsmConfig``) names its transformers weights in ``"transformers_weights":
"transformers.safetensors.index.json"`` (two shards, ``transformers-0000N-of-00002.safetensors``),
next to ``model.safetensors`` and ``ckpt.pt`` in the original layout. We prefer the
transformers weights (codec bundled) and fall back to the original layout when only that is
present.

:func:`inspect_checkpoint` decides all of that from the safetensors headers (names, shapes)
without reading a tensor, and checks the tokenizer; :func:`load_checkpoint` then streams the
tensors one by one into a model built on the meta device. ``echoforge doctor`` and
``echoforge engines`` use the inspection alone.

Every failure raises :class:`CheckpointError` with one line naming the file and what to do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from echoforge.csm.model import CSM, CSMArgs, ModelArgs, transformer_configs
from echoforge.engines.base import EngineUnavailable

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
# Single-file / index weight names, in the order they are tried (after config.json's transformers_weights).
_WEIGHT_NAMES = ("model.safetensors.index.json", "model.safetensors", "ckpt.pt", "model.pt", "pytorch_model.bin")
_SHARD_RE = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.safetensors$")


class CheckpointError(EngineUnavailable):
    """Weights, tokenizer or codec could not be found or do not fit the model."""


class WeightsNotFound(CheckpointError):
    """The model is not on this machine (path missing, or a hub repo not in the local cache)."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the network plus what the generator needs around it."""

    model: CSM
    layout: str  # "transformers" or "sesame" (the original layout)
    path: Path
    tokenizer: Any  # tokenizers.Tokenizer
    bos_id: int
    eos_id: int
    codec_config: dict | None  # Mimi config from the CSM config.json, if bundled
    codec_state: dict[str, Tensor] | None  # Mimi weights from the checkpoint, if bundled
    plan: CheckpointPlan | None = None  # what was inspected before loading


# ----------------------------------------------------------------------------- locating


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


def _hub_errors():
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    return GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError


def hub_weight_patterns(repo_id: str) -> list[str]:
    """The files of ONE weight set of a hub CSM repo (plus config/tokenizer files).

    Downloads ``config.json`` alone first: when it names ``transformers_weights`` that file
    (and, for an index, the index and every shard it lists) is the set — never the original
    ``model.safetensors`` / ``ckpt.pt`` next to it; otherwise ``model.safetensors`` (or its shards).
    """
    from huggingface_hub import hf_hub_download

    cfg = _read_json(Path(hf_hub_download(repo_id, "config.json")))
    named = cfg.get("transformers_weights")
    if named:
        weights = [named]
        if named.endswith(".index.json"):
            index = _read_json(Path(hf_hub_download(repo_id, named)))
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
        return bool(weight_sets(d, _read_json(d / "config.json")))
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
    try:
        from huggingface_hub import snapshot_download

        GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError = _hub_errors()
    except ImportError as exc:  # pragma: no cover - huggingface_hub ships with transformers
        raise CheckpointError(f"cannot fetch {repo_id!r}: huggingface_hub is not installed") from exc
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


# ----------------------------------------------------------------------------- weight files


def _read_json(path: Path) -> dict:
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
    wm = _read_json(index).get("weight_map")
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
            from safetensors import safe_open

            with _weight_file(f), safe_open(str(f), framework="pt") as h:
                for k in h.keys():
                    sl = h.get_slice(k)
                    out[k] = TensorInfo(k, tuple(sl.get_shape()), str(sl.get_dtype()), f)
        else:
            for k, v in _load_pickle(f).items():
                out[k] = TensorInfo(k, tuple(v.shape), str(v.dtype).removeprefix("torch."), f)
    return out


def layout_of(names) -> str | None:
    """``"transformers"``, ``"sesame"`` (original) or None, from tensor names alone."""
    names = {k.removeprefix("_orig_mod.") for k in names}
    if "lm_head.weight" in names or any(k.startswith(("backbone_model.", "depth_decoder.")) for k in names):
        return "transformers"
    if "codebook0_head.weight" in names or any(k.startswith("backbone.layers.") for k in names):
        return "sesame"
    return None


# ----------------------------------------------------------------------------- configs


def _rope(cfg: dict) -> tuple[float, dict | None]:
    # transformers >= 4.57 writes `rope_parameters`; older files use rope_theta + rope_scaling.
    rp = cfg.get("rope_parameters") or {}
    theta = float(rp.get("rope_theta", cfg.get("rope_theta", 500_000.0)))
    sc = cfg.get("rope_scaling") or rp
    kind = sc.get("rope_type", sc.get("type", "default")) if sc else "default"
    if kind in (None, "default"):
        return theta, None
    if kind != "llama3":
        raise CheckpointError(f"unsupported RoPE type {kind!r} in config.json (only default and llama3)")
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return theta, {k: sc[k] for k in keys}


def _hf_model_args(cfg: dict, max_seq_len: int) -> ModelArgs:
    if cfg.get("hidden_act", "silu") != "silu" or cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise CheckpointError("config.json: only SiLU MLPs without biases are supported (Llama-style CSM)")
    theta, scaling = _rope(cfg)
    return ModelArgs(
        n_layer=cfg["num_hidden_layers"],
        n_head=cfg["num_attention_heads"],
        n_local_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        dim=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        head_dim=cfg.get("head_dim") or -1,
        rope_base=theta,
        rope_scaling=scaling,
        norm_eps=cfg.get("rms_norm_eps", 1e-5),
        max_seq_len=max_seq_len,
    )


def args_from_hf_config(cfg: dict) -> CSMArgs:
    """CSMArgs from a transformers ``config.json`` dict (``model_type: csm``)."""
    try:
        dec = cfg["depth_decoder_config"]
        return CSMArgs(
            backbone=_hf_model_args(cfg, cfg.get("max_position_embeddings", 2048)),
            decoder=_hf_model_args(dec, cfg.get("num_codebooks", 32)),
            text_vocab_size=cfg.get("text_vocab_size", 128_256),
            audio_vocab_size=cfg.get("vocab_size", 2051),
            audio_num_codebooks=cfg.get("num_codebooks", 32),
        )
    except KeyError as exc:
        raise CheckpointError(f"config.json: missing field {exc} for model_type csm") from exc


def args_from_sesame_config(cfg: dict) -> CSMArgs:
    """CSMArgs from the original ``config.json`` (``backbone_flavor`` etc.).

    A flavour is a preset name (``llama-1B``, ``llama-100M``) or a dict of ModelArgs fields.
    """

    def flavor(v: Any) -> ModelArgs:
        if isinstance(v, dict):
            return ModelArgs(**v)
        if v not in transformer_configs:
            raise CheckpointError(f"config.json: unknown flavour {v!r}; known: {sorted(transformer_configs)}")
        return ModelArgs(**transformer_configs[v])

    return CSMArgs(
        backbone=flavor(cfg.get("backbone_flavor", "llama-1B")),
        decoder=flavor(cfg.get("decoder_flavor", "llama-100M")),
        text_vocab_size=cfg.get("text_vocab_size", 128_256),
        audio_vocab_size=cfg.get("audio_vocab_size", 2051),
        audio_num_codebooks=cfg.get("audio_num_codebooks", 32),
    )


# ----------------------------------------------------------------------------- key mapping


@dataclass(frozen=True)
class TensorSpec:
    """How one of our tensors is built from checkpoint tensors.

    ``op``: ``copy`` (one source), ``cat`` (q, k, v concatenated on dim 0) or ``rope_cat``
    (torchtune q/k rows permuted from interleaved to half-split RoPE, then concatenated).
    """

    ours: str
    srcs: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]  # expected shape of each source
    op: str = "copy"
    heads: tuple[int, int] = (0, 0)  # (q heads, kv heads) for rope_cat


def _interleaved_to_half(w: Tensor, n_heads: int) -> Tensor:
    # torchtune rotates pairs (x0,x1),(x2,x3)…; we rotate (x_i, x_{i+hd/2}). Reorder each head's rows.
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _half_to_interleaved(w: Tensor, n_heads: int) -> Tensor:
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def combine(spec: TensorSpec, tensors: list[Tensor]) -> Tensor:
    if spec.op == "copy":
        return tensors[0]
    if spec.op == "rope_cat":
        q, k, v = tensors
        return torch.cat([_interleaved_to_half(q, spec.heads[0]), _interleaved_to_half(k, spec.heads[1]), v], dim=0)
    return torch.cat(tensors, dim=0)


# The transformers model ties the backbone's audio embedding to the depth decoder's; files may hold either name.
_HF_AUDIO_EMBED = ("backbone_model.embed_tokens.embed_audio_tokens.weight", "depth_decoder.model.embed_tokens.weight")


def tensor_specs(args: CSMArgs, layout: str, names=()) -> list[TensorSpec]:
    """Every tensor of ``CSM(args)`` and where it comes from in a ``layout`` checkpoint.

    ``names`` (the checkpoint's tensor names) only choose between aliases of tied weights.
    """
    with torch.device("meta"):
        own = {k: tuple(v.shape) for k, v in CSM(args).state_dict().items()}
    names = set(names)
    specs: list[TensorSpec] = []

    def copy(ours: str, src: str) -> None:
        specs.append(TensorSpec(ours, (src,), (own[ours],)))

    if layout == "transformers":
        copy("text_embeddings.weight", "embed_text_tokens.weight")
        audio = next((n for n in _HF_AUDIO_EMBED if n in names), _HF_AUDIO_EMBED[1])
        copy("audio_embeddings.weight", audio)
        copy("codebook0_head.weight", "lm_head.weight")
        copy("projection.weight", "depth_decoder.model.inputs_embeds_projector.weight")
        copy("audio_head", "depth_decoder.codebooks_head.weight")
        copy("backbone.norm.weight", "backbone_model.norm.weight")
        copy("decoder.norm.weight", "depth_decoder.model.norm.weight")
        parts = (("backbone", "backbone_model", args.backbone), ("decoder", "depth_decoder.model", args.decoder))
        names_of = {
            "q": "self_attn.q_proj.weight", "k": "self_attn.k_proj.weight", "v": "self_attn.v_proj.weight",
            "o": "self_attn.o_proj.weight", "w1": "mlp.gate_proj.weight", "w3": "mlp.up_proj.weight",
            "w2": "mlp.down_proj.weight", "n1": "input_layernorm.weight", "n2": "post_attention_layernorm.weight",
        }  # fmt: skip
        op = "cat"
    elif layout == "sesame":
        for k in ("text_embeddings.weight", "audio_embeddings.weight", "projection.weight", "codebook0_head.weight",
                  "audio_head"):  # fmt: skip
            copy(k, k)
        copy("backbone.norm.weight", "backbone.norm.scale")
        copy("decoder.norm.weight", "decoder.norm.scale")
        parts = (("backbone", "backbone", args.backbone), ("decoder", "decoder", args.decoder))
        names_of = {
            "q": "attn.q_proj.weight", "k": "attn.k_proj.weight", "v": "attn.v_proj.weight",
            "o": "attn.output_proj.weight", "w1": "mlp.w1.weight", "w3": "mlp.w3.weight", "w2": "mlp.w2.weight",
            "n1": "sa_norm.scale", "n2": "mlp_norm.scale",
        }  # fmt: skip
        op = "rope_cat"
    else:
        raise ValueError(f"unknown layout {layout!r}")
    for ours_part, src_part, a in parts:
        q_dim, kv_dim = a.n_head * a.head_dim, a.n_local_heads * a.head_dim
        for i in range(a.n_layer):
            o, s = f"{ours_part}.layers.{i}", f"{src_part}.layers.{i}"
            w = lambda key, s=s: f"{s}.{names_of[key]}"  # noqa: E731
            specs.append(TensorSpec(
                f"{o}.attention.wqkv.weight", (w("q"), w("k"), w("v")),
                ((q_dim, a.dim), (kv_dim, a.dim), (kv_dim, a.dim)), op, (a.n_head, a.n_local_heads),
            ))  # fmt: skip
            copy(f"{o}.attention.wo.weight", w("o"))
            copy(f"{o}.feed_forward.w1.weight", w("w1"))
            copy(f"{o}.feed_forward.w3.weight", w("w3"))
            copy(f"{o}.feed_forward.w2.weight", w("w2"))
            copy(f"{o}.attention_norm.weight", w("n1"))
            copy(f"{o}.ffn_norm.weight", w("n2"))
    assert {sp.ours for sp in specs} == set(own), "tensor_specs out of sync with CSM"
    return specs


def _convert(sd: dict[str, Tensor], args: CSMArgs, layout: str, where: Path) -> dict[str, Tensor]:
    out = {}
    for spec in tensor_specs(args, layout, sd):
        missing = [s for s in spec.srcs if s not in sd]
        if missing:
            raise CheckpointError(
                f"{where}: missing tensor {missing[0]!r}; the checkpoint is incomplete or not a CSM model"
            )
        out[spec.ours] = combine(spec, [sd[s] for s in spec.srcs])
    return out


def convert_hf_state_dict(sd: dict[str, Tensor], args: CSMArgs, where: Path = Path("?")) -> dict[str, Tensor]:
    """transformers ``CsmForConditionalGeneration`` names -> ours (codec weights dropped)."""
    return _convert(sd, args, "transformers", where)


def convert_sesame_state_dict(sd: dict[str, Tensor], args: CSMArgs, where: Path = Path("?")) -> dict[str, Tensor]:
    """Original Sesame / torchtune names -> ours."""
    return _convert({k.removeprefix("_orig_mod."): v for k, v in sd.items()}, args, "sesame", where)


def export_sesame_state_dict(model: CSM) -> dict[str, Tensor]:
    """Our weights in the original Sesame layout (inverse of :func:`convert_sesame_state_dict`)."""
    sd = model.state_dict()
    out = {
        k: sd[k].clone()
        for k in (
            "text_embeddings.weight",
            "audio_embeddings.weight",
            "projection.weight",
            "codebook0_head.weight",
            "audio_head",
        )
    }
    for part, a in (("backbone", model.args.backbone), ("decoder", model.args.decoder)):
        out[f"{part}.norm.scale"] = sd[f"{part}.norm.weight"].clone()
        q_dim, kv_dim = a.n_head * a.head_dim, a.n_local_heads * a.head_dim
        for i in range(a.n_layer):
            p = f"{part}.layers.{i}"
            q, k, v = sd[f"{p}.attention.wqkv.weight"].split([q_dim, kv_dim, kv_dim])
            w1, w3 = sd[f"{p}.feed_forward.w1.weight"], sd[f"{p}.feed_forward.w3.weight"]
            out.update({
                f"{p}.attn.q_proj.weight": _half_to_interleaved(q, a.n_head),
                f"{p}.attn.k_proj.weight": _half_to_interleaved(k, a.n_local_heads),
                f"{p}.attn.v_proj.weight": v.clone(),
                f"{p}.attn.output_proj.weight": sd[f"{p}.attention.wo.weight"].clone(),
                f"{p}.mlp.w1.weight": w1.clone(),
                f"{p}.mlp.w3.weight": w3.clone(),
                f"{p}.mlp.w2.weight": sd[f"{p}.feed_forward.w2.weight"].clone(),
                f"{p}.sa_norm.scale": sd[f"{p}.attention_norm.weight"].clone(),
                f"{p}.mlp_norm.scale": sd[f"{p}.ffn_norm.weight"].clone(),
            })  # fmt: skip
    return out


# ----------------------------------------------------------------------------- tokenizer


def load_tokenizer(path: Path, cfg: dict | None = None) -> tuple[Any, int, int]:
    """``tokenizer.json`` from ``path`` (dir or file) -> (tokenizer, bos_id, eos_id).

    bos/eos are Llama-3's ``<|begin_of_text|>`` / ``<|end_of_text|>``, else the tokens named in
    ``tokenizer_config.json``, else the ids in ``config.json``; each must exist in the tokenizer.
    """
    from tokenizers import Tokenizer

    f = path / "tokenizer.json" if path.is_dir() else path
    if not f.is_file():
        raise CheckpointError(
            f"{f}: tokenizer.json not found; CSM uses the Llama-3.2 tokenizer — put tokenizer.json next to the "
            "weights or set csm.tokenizer to a directory / repo that has it"
        )
    try:
        tok = Tokenizer.from_file(str(f))
    except Exception as exc:
        raise CheckpointError(f"{f}: unreadable tokenizer ({exc}); re-download it") from exc
    cfg = cfg or {}
    tcfg_file = f.parent / "tokenizer_config.json"
    tcfg = {}
    if tcfg_file.is_file():
        with contextlib.suppress(CheckpointError):
            tcfg = _read_json(tcfg_file)
    size = tok.get_vocab_size(with_added_tokens=True)

    def special(token: str, key: str, cfg_key: str) -> int:
        named = tcfg.get(key)
        named = named.get("content") if isinstance(named, dict) else named
        for cand in (token, named):
            if isinstance(cand, str) and (i := tok.token_to_id(cand)) is not None:
                return int(i)
        i = cfg.get(cfg_key)
        i = i[0] if isinstance(i, list) and i else i
        if isinstance(i, int) and 0 <= i < size:
            return i
        raise CheckpointError(
            f"{f}: the tokenizer has no {token} ({key}) token; CSM needs the Llama-3.2 tokenizer "
            "(set csm.tokenizer to a directory / repo with it)"
        )

    return (
        tok,
        special("<|begin_of_text|>", "bos_token", "bos_token_id"),
        special("<|end_of_text|>", "eos_token", "eos_token_id"),
    )


# ----------------------------------------------------------------------------- inspection


@dataclass
class CheckpointPlan:
    """What :func:`load_checkpoint` will read, checked against the config without reading tensors."""

    path: Path  # the checkpoint directory
    layout: str  # "transformers" or "sesame" (the original layout)
    weights: WeightSet
    config: dict
    args: CSMArgs
    specs: list[TensorSpec]
    tensors: dict[str, TensorInfo]  # every tensor in the chosen files, by stored name
    tokenizer_path: Path
    tokenizer: Any
    bos_id: int
    eos_id: int
    codec_keys: list[str] = field(default_factory=list)  # bundled Mimi (codec_model.*) tensor names
    codec: str | None = None  # explicit csm.codec, if any
    unused: list[str] = field(default_factory=list)  # other weight sets present, not read

    @property
    def codec_bundled(self) -> bool:
        return bool(self.codec_keys) and bool(self.config.get("codec_config"))

    @property
    def codec_source(self) -> str:
        """``"bundled"`` or the Mimi repo / path that will be loaded."""
        if self.codec:
            return str(self.codec)
        return "bundled" if self.codec_bundled else "kyutai/mimi"

    @property
    def n_params(self) -> int:
        return sum(int(torch.Size(s).numel()) for sp in self.specs for s in sp.shapes)

    def describe(self) -> str:
        """e.g. ``transformers layout: transformers.safetensors.index.json (2 shards), Mimi bundled``."""
        name = "transformers layout" if self.layout == "transformers" else "original layout"
        src = self.codec_source
        mimi = "Mimi bundled" if src == "bundled" else f"Mimi from {src}"
        return f"{name}: {self.weights.label}, {mimi}"


def _stored(infos: dict[str, TensorInfo], layout: str) -> dict[str, TensorInfo]:
    """Stored names -> logical names (torch.compile's ``_orig_mod.`` prefix dropped for the original layout)."""
    if layout == "sesame":
        return {k.removeprefix("_orig_mod."): v for k, v in infos.items()}
    return dict(infos)


def _check_tensors(plan_specs: list[TensorSpec], infos: dict[str, TensorInfo], args: CSMArgs, layout: str,
                   where: str) -> None:  # fmt: skip
    missing = [s for sp in plan_specs for s in sp.srcs if s not in infos]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(
            f"{where}: missing tensor {missing[0]!r}{more}; the checkpoint is incomplete or not a CSM model — re-download it"
        )
    for sp in plan_specs:
        for s, want in zip(sp.srcs, sp.shapes, strict=True):
            got = infos[s].shape
            if tuple(got) != tuple(want):
                raise CheckpointError(
                    f"{infos[s].file}: tensor {s!r} has shape {tuple(got)} but config.json implies {tuple(want)}; "
                    "the config and weights do not belong together"
                )
    prefixes = {"transformers": ("backbone_model", "depth_decoder.model"), "sesame": ("backbone", "decoder")}[layout]
    for prefix, a, what in ((prefixes[0], args.backbone, "backbone"), (prefixes[1], args.decoder, "depth decoder")):
        pat = re.compile(re.escape(prefix) + r"\.layers\.(\d+)\.")
        found = {int(m[1]) for k in infos if (m := pat.match(k))}
        if found and max(found) + 1 != a.n_layer:
            raise CheckpointError(
                f"{where}: {max(found) + 1} {what} layers but config.json says {a.n_layer}; "
                "the config and weights do not belong together"
            )


def inspect_checkpoint(
    path_or_repo_id: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | None = None,
    codec: str | os.PathLike | None = None,
    local_files_only: bool | None = True,
) -> CheckpointPlan:
    """Decide which files and layout :func:`load_checkpoint` will use and check they would load.

    Reads config.json, the tokenizer (first: it must load and have bos/eos) and the weight
    headers (names, shapes) — never the tensors. Prefers ``transformers_weights`` / transformers
    tensor names (Mimi bundled) over the original layout.

    Raises:
        WeightsNotFound: nothing at that path / not in the cache.
        CheckpointError: it would not load — one line naming the file and what to do.
    """
    root = resolve(path_or_repo_id, local_files_only)
    d = root if root.is_dir() else root.parent
    cfg = _read_json(d / "config.json") if (d / "config.json").is_file() else {}
    # The tokenizer first: a missing tokenizer must not cost reading gigabytes.
    tok_src = Path(resolve(tokenizer, local_files_only, what="tokenizer")) if tokenizer else d
    tok, bos, eos = load_tokenizer(tok_src, cfg)
    if root.is_dir():
        sets = weight_sets(d, cfg)
        if not sets:
            named = cfg.get("transformers_weights")
            raise CheckpointError(
                f"{d}: no weights found (expected {named + ' (named by config.json) or ' if named else ''}"
                "model.safetensors or ckpt.pt); download them again"
            )
    else:
        sets = [WeightSet(root.name, [root])]
    chosen: tuple[WeightSet, str, dict[str, TensorInfo]] | None = None
    unknown: list[str] = []
    for ws in sets:
        if chosen is not None and ws.files[0].suffix != ".safetensors":
            continue  # an original-layout set is already found: do not unpickle more
        infos = read_headers(ws)
        kind = layout_of(infos)
        if kind == "transformers":
            chosen = (ws, kind, infos)
            break
        if kind == "sesame" and chosen is None:
            chosen = (ws, kind, infos)
        elif kind is None:
            unknown.append(ws.label)
    if chosen is None:
        raise CheckpointError(
            f"{d}: {', '.join(unknown)}: unknown checkpoint format (neither transformers CSM nor original Sesame "
            "tensor names); is csm.model the CSM repo?"
        )
    ws, layout, raw = chosen
    where = str(ws.index or ws.files[0]) if len(ws.files) > 1 or ws.index else str(ws.files[0])
    if cfg.get("model_type") == "csm":
        args = args_from_hf_config(cfg)
    elif layout == "transformers":
        raise CheckpointError(
            f"{d}/config.json: missing or not model_type 'csm'; it is needed for transformers-format weights"
        )
    else:
        args = args_from_sesame_config(cfg)
    infos = _stored(raw, layout)
    specs = tensor_specs(args, layout, infos)
    _check_tensors(specs, infos, args, layout, where)
    for name, i in (("bos", bos), ("eos", eos)):
        if i >= args.text_vocab_size:
            raise CheckpointError(
                f"{tok_src}: {name} id {i} is outside the model's text vocabulary ({args.text_vocab_size}); "
                "tokenizer and weights do not belong together"
            )
    codec_keys = [k for k in raw if k.startswith("codec_model.")] if layout == "transformers" else []
    return CheckpointPlan(
        path=d, layout=layout, weights=ws, config=cfg, args=args, specs=specs, tensors=infos, tokenizer_path=tok_src,
        tokenizer=tok, bos_id=bos, eos_id=eos, codec_keys=codec_keys, codec=str(codec) if codec else None,
        unused=[s.label for s in sets if s is not ws],
    )  # fmt: skip


# ----------------------------------------------------------------------------- loading


class _Reader:
    """Reads single tensors from the plan's files (safetensors handles / memory-mapped pickles)."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._st: dict[Path, Any] = {}
        self._pt: dict[Path, dict[str, Tensor]] = {}

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self._pt.clear()

    def get(self, info: TensorInfo) -> Tensor:
        f = info.file
        try:
            if f.suffix == ".safetensors":
                if f not in self._st:
                    from safetensors import safe_open

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


def _assign(model: nn.Module, key: str, value: Tensor) -> None:
    mod_path, _, attr = key.rpartition(".")
    mod = model.get_submodule(mod_path) if mod_path else model
    old = getattr(mod, attr)
    setattr(mod, attr, nn.Parameter(value, requires_grad=old.requires_grad))


def load_checkpoint(
    path_or_repo_id: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    tokenizer: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    *,
    plan: CheckpointPlan | None = None,
) -> Checkpoint:
    """Load either layout from a directory, a weights file or a hub repo id.

    :func:`inspect_checkpoint` runs first (tokenizer, headers, shapes); then each tensor is read
    on its own, converted to ``dtype`` on ``device`` and put into a model built on the meta
    device, so the weights are never held twice.
    """
    t0 = time.perf_counter()
    plan = plan or inspect_checkpoint(path_or_repo_id, tokenizer=tokenizer, local_files_only=local_files_only)
    with torch.device("meta"):
        model = CSM(plan.args)
    codec_state: dict[str, Tensor] | None = None
    with _Reader() as reader:
        for spec in plan.specs:
            t = combine(spec, [reader.get(plan.tensors[s]) for s in spec.srcs])
            _assign(model, spec.ours, t.to(device=device, dtype=dtype).contiguous())
        if plan.codec_bundled:
            codec_state = {k.removeprefix("codec_model."): reader.get(plan.tensors[k]) for k in plan.codec_keys}
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:  # pragma: no cover - tensor_specs asserts full coverage
        raise CheckpointError(f"{plan.path}: tensors not loaded: {left[:3]}")
    _init_buffers(model, device)
    model.eval()
    log.info("loaded CSM from %s (%s) on %s/%s in %.1f s", plan.path, plan.describe(), device, dtype,
             time.perf_counter() - t0)  # fmt: skip
    return Checkpoint(
        model, plan.layout, plan.path, plan.tokenizer, plan.bos_id, plan.eos_id,
        plan.config.get("codec_config") if codec_state else None, codec_state, plan,
    )  # fmt: skip


def _init_buffers(model: CSM, device: torch.device | str) -> None:
    """Recompute the non-persistent buffers that ``to_empty`` left uninitialised.

    RoPE tables stay fp32 even for bf16 weights (bf16 angles lose precision); they are cast at use.
    """
    from echoforge.csm.model import rope_tables

    for t in (model.backbone, model.decoder):
        cos, sin = rope_tables(t.args)
        t.rope_cos, t.rope_sin = cos.to(device), sin.to(device)
    k = model.args.audio_num_codebooks
    model.codebook_offsets = torch.arange(k, device=device) * model.args.audio_vocab_size
    model.decoder_causal = torch.ones(k, k, dtype=torch.bool, device=device).tril()
    model.decoder_positions = torch.arange(k, device=device)
