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

This module loads; the jobs around it live next door: :mod:`echoforge.csm.hub` (local path or hub
repo, offline messages), :mod:`echoforge.csm.weights` (weight sets, headers, tensor reading) and
:mod:`echoforge.csm.layouts` (the two layouts' configs and tensor maps, conversion and export).
Their public names are re-exported here, where they have always been importable from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from echoforge.csm.hub import (
    HUB_SIDE_FILES,
    hf_offline,
    hub_weight_patterns,
    is_repo_id,
    missing_weights_message,
    resolve,
)
from echoforge.csm.layouts import (
    TensorSpec,
    args_from_hf_config,
    args_from_sesame_config,
    combine,
    convert_hf_state_dict,
    convert_sesame_state_dict,
    export_sesame_state_dict,
    layout_of,
    tensor_specs,
)
from echoforge.csm.model import CSM, CSMArgs
from echoforge.csm.weights import (
    CheckpointError,
    TensorInfo,
    TensorReader,
    WeightSet,
    WeightsNotFound,
    read_headers,
    read_json,
    weight_sets,
)

log = logging.getLogger("echoforge.csm")


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


# ----------------------------------------------------------------------------- tokenizer


def load_tokenizer(path: Path, cfg: dict | None = None) -> tuple[Any, int, int]:
    """``tokenizer.json`` from ``path`` (dir or file) -> (tokenizer, bos_id, eos_id).

    bos/eos are Llama-3's ``<|begin_of_text|>`` / ``<|end_of_text|>``, else the tokens named in
    ``tokenizer_config.json``, else the ids in ``config.json``; each must exist in the tokenizer.
    """
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
            tcfg = read_json(tcfg_file)
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
    cfg = read_json(d / "config.json") if (d / "config.json").is_file() else {}
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
    with TensorReader() as reader:
        for spec in plan.specs:
            t = combine(spec, [reader.get(plan.tensors[s]) for s in spec.srcs])
            _assign(model, spec.ours, t.to(device=device, dtype=dtype).contiguous())
        if plan.codec_bundled:
            codec_state = {k.removeprefix("codec_model."): reader.get(plan.tensors[k]) for k in plan.codec_keys}
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:  # pragma: no cover - tensor_specs asserts full coverage
        raise CheckpointError(f"{plan.path}: tensors not loaded: {left[:3]}")
    model.init_buffers(device)  # built on the meta device: buffers hold no values yet
    model.eval()
    log.info("loaded CSM from %s (%s) on %s/%s in %.1f s", plan.path, plan.describe(), device, dtype,
             time.perf_counter() - t0)  # fmt: skip
    return Checkpoint(
        model, plan.layout, plan.path, plan.tokenizer, plan.bos_id, plan.eos_id,
        plan.config.get("codec_config") if codec_state else None, codec_state, plan,
    )  # fmt: skip


__all__ = [
    "HUB_SIDE_FILES",
    "Checkpoint",
    "CheckpointError",
    "CheckpointPlan",
    "TensorInfo",
    "TensorSpec",
    "WeightSet",
    "WeightsNotFound",
    "args_from_hf_config",
    "args_from_sesame_config",
    "combine",
    "convert_hf_state_dict",
    "convert_sesame_state_dict",
    "export_sesame_state_dict",
    "hf_offline",
    "hub_weight_patterns",
    "inspect_checkpoint",
    "is_repo_id",
    "layout_of",
    "load_checkpoint",
    "load_tokenizer",
    "missing_weights_message",
    "read_headers",
    "resolve",
    "tensor_specs",
    "weight_sets",
]
