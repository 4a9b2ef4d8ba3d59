"""Find and load CSM checkpoints into :class:`echoforge.csm.model.CSM`.

Two layouts are understood:

* **transformers** (``sesame/csm-1b`` today): ``config.json`` with ``model_type: csm``,
  ``model.safetensors`` (or a sharded index) holding ``backbone_model.*``, ``depth_decoder.*``,
  ``embed_text_tokens``, ``lm_head`` and the Mimi codec under ``codec_model.*``, plus
  ``tokenizer.json``.
* **original Sesame** (``ckpt.pt`` / ``model.safetensors`` with torchtune names):
  ``backbone.layers.N.attn.q_proj`` … ``sa_norm.scale``, ``text_embeddings``,
  ``audio_embeddings``, ``projection``, ``codebook0_head``, ``audio_head``. Torchtune's RoPE
  rotates interleaved pairs while ours rotates halves, so q/k rows are permuted on load
  (and back in :func:`export_sesame_state_dict`).

Every failure raises :class:`CheckpointError` with the file and what to do about it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from echoforge.csm.model import CSM, CSMArgs, ModelArgs, transformer_configs
from echoforge.engines.base import EngineUnavailable

log = logging.getLogger("echoforge.csm")

# What a hub download needs (skips e.g. the original ckpt.pt when a safetensors file exists).
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.model"]


class CheckpointError(EngineUnavailable):
    """Weights, tokenizer or codec could not be found or do not fit the model."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the network plus what the generator needs around it."""

    model: CSM
    layout: str  # "transformers" or "sesame"
    path: Path
    tokenizer: Any  # tokenizers.Tokenizer
    bos_id: int
    eos_id: int
    codec_config: dict | None  # Mimi config from the CSM config.json, if bundled
    codec_state: dict[str, Tensor] | None  # Mimi weights from the checkpoint, if bundled


# ----------------------------------------------------------------------------- locating


def is_repo_id(s: str) -> bool:
    """``owner/name`` that is not a filesystem path."""
    return not s.startswith((".", "/", "~")) and s.count("/") == 1 and not Path(s).exists()


def resolve(path_or_repo_id: str | os.PathLike, local_files_only: bool | None = None) -> Path:
    """Return a local directory or file for ``path_or_repo_id``.

    Local paths are used as they are. A hub repo id is looked up in the local Hugging Face
    cache first (no network); only if it is missing there and ``HF_HUB_OFFLINE`` is not set
    (and ``local_files_only`` is not True) is it downloaded.
    """
    p = Path(os.path.expanduser(str(path_or_repo_id)))
    if p.exists():
        return p
    repo_id = str(path_or_repo_id)
    if not is_repo_id(repo_id):
        raise CheckpointError(
            f"CSM model path {repo_id!r} does not exist (and is not a hub repo id like 'sesame/csm-1b')"
        )
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as exc:  # pragma: no cover - huggingface_hub ships with transformers
        raise CheckpointError(f"cannot fetch {repo_id!r}: huggingface_hub is not installed") from exc
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    except Exception as exc:  # e.g. a half-written cache entry
        log.debug("local HF cache lookup for %s failed: %s", repo_id, exc)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    if local_files_only or offline:
        raise CheckpointError(
            f"{repo_id!r} is not in the local Hugging Face cache and downloads are disabled; "
            f"download it once with `huggingface-cli download {repo_id}` or point csm.model at a local directory"
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except GatedRepoError as exc:
        raise CheckpointError(
            f"{repo_id!r} is gated: accept its terms on huggingface.co and run `huggingface-cli login`, "
            "or use an ungated mirror / local directory"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise CheckpointError(f"hub repo {repo_id!r} not found (or private without a token)") from exc
    except Exception as exc:
        raise CheckpointError(f"could not download {repo_id!r}: {exc.__class__.__name__}: {exc}") from exc


# ----------------------------------------------------------------------------- reading files


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc}); re-download the checkpoint") from exc


def _read_weights(path: Path) -> dict[str, Tensor]:
    """Read one safetensors / torch file, or a sharded safetensors index."""
    try:
        if path.name.endswith(".index.json"):
            index = _read_json(path)
            out: dict[str, Tensor] = {}
            for shard in sorted(set(index.get("weight_map", {}).values())):
                out.update(_read_weights(path.parent / shard))
            return out
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: weight file missing; re-download the checkpoint") from exc
    except Exception as exc:
        raise CheckpointError(
            f"{path}: corrupt or unreadable weights ({exc.__class__.__name__}: {exc}); re-download it"
        ) from exc
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def _find_weights(d: Path) -> Path:
    for name in ("model.safetensors.index.json", "model.safetensors", "ckpt.pt", "model.pt", "pytorch_model.bin"):
        if (d / name).is_file():
            return d / name
    found = sorted(d.glob("*.safetensors")) + sorted(d.glob("*.pt"))
    if found:
        return found[0]
    raise CheckpointError(f"{d}: no weights found (expected model.safetensors or ckpt.pt)")


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


def _fuse_layer(
    get, ours: str, q: str, k: str, v: str, o: str, gate: str, up: str, down: str, n1: str, n2: str, out: dict
) -> None:
    out[f"{ours}.attention.wqkv.weight"] = torch.cat([get(q), get(k), get(v)], dim=0)
    out[f"{ours}.attention.wo.weight"] = get(o)
    out[f"{ours}.feed_forward.w1.weight"] = get(gate)
    out[f"{ours}.feed_forward.w3.weight"] = get(up)
    out[f"{ours}.feed_forward.w2.weight"] = get(down)
    out[f"{ours}.attention_norm.weight"] = get(n1)
    out[f"{ours}.ffn_norm.weight"] = get(n2)


def _getter(sd: dict[str, Tensor], where: Path):
    def get(key: str) -> Tensor:
        try:
            return sd[key]
        except KeyError:
            raise CheckpointError(
                f"{where}: missing tensor {key!r}; the checkpoint is incomplete or not a CSM model"
            ) from None

    return get


def convert_hf_state_dict(sd: dict[str, Tensor], args: CSMArgs, where: Path = Path("?")) -> dict[str, Tensor]:
    """transformers ``CsmForConditionalGeneration`` names -> ours (codec weights dropped)."""
    get = _getter(sd, where)
    audio = sd.get("backbone_model.embed_tokens.embed_audio_tokens.weight")
    if audio is None:  # tied weights may be saved under the decoder's name only
        audio = get("depth_decoder.model.embed_tokens.weight")
    out = {
        "text_embeddings.weight": get("embed_text_tokens.weight"),
        "audio_embeddings.weight": audio,
        "codebook0_head.weight": get("lm_head.weight"),
        "projection.weight": get("depth_decoder.model.inputs_embeds_projector.weight"),
        "audio_head": get("depth_decoder.codebooks_head.weight"),
        "backbone.norm.weight": get("backbone_model.norm.weight"),
        "decoder.norm.weight": get("depth_decoder.model.norm.weight"),
    }
    for src, dst, n in (
        ("backbone_model", "backbone", args.backbone.n_layer),
        ("depth_decoder.model", "decoder", args.decoder.n_layer),
    ):
        for i in range(n):
            p = f"{src}.layers.{i}"
            _fuse_layer(
                get, f"{dst}.layers.{i}",
                *(f"{p}.self_attn.{x}_proj.weight" for x in "qkvo"),
                *(f"{p}.mlp.{x}_proj.weight" for x in ("gate", "up", "down")),
                f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight", out,
            )  # fmt: skip
    return out


def _interleaved_to_half(w: Tensor, n_heads: int) -> Tensor:
    # torchtune rotates pairs (x0,x1),(x2,x3)…; we rotate (x_i, x_{i+hd/2}). Reorder each head's rows.
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _half_to_interleaved(w: Tensor, n_heads: int) -> Tensor:
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def convert_sesame_state_dict(sd: dict[str, Tensor], args: CSMArgs, where: Path = Path("?")) -> dict[str, Tensor]:
    """Original Sesame / torchtune names -> ours."""
    sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items()}
    get = _getter(sd, where)
    out = {
        k: get(k)
        for k in (
            "text_embeddings.weight",
            "audio_embeddings.weight",
            "projection.weight",
            "codebook0_head.weight",
            "audio_head",
        )
    }
    for part, a in (("backbone", args.backbone), ("decoder", args.decoder)):
        out[f"{part}.norm.weight"] = get(f"{part}.norm.scale")
        for i in range(a.n_layer):
            p = f"{part}.layers.{i}"
            fixed = {
                f"{p}.attn.q_proj.weight": _interleaved_to_half(get(f"{p}.attn.q_proj.weight"), a.n_head),
                f"{p}.attn.k_proj.weight": _interleaved_to_half(get(f"{p}.attn.k_proj.weight"), a.n_local_heads),
            }
            _fuse_layer(
                lambda k, fixed=fixed: fixed[k] if k in fixed else get(k), p,
                *(f"{p}.attn.{x}_proj.weight" for x in ("q", "k", "v", "output")),
                *(f"{p}.mlp.{x}.weight" for x in ("w1", "w3", "w2")),
                f"{p}.sa_norm.scale", f"{p}.mlp_norm.scale", out,
            )  # fmt: skip
    return out


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
    """``tokenizer.json`` from ``path`` (dir or file) -> (tokenizer, bos_id, eos_id)."""
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
        raise CheckpointError(f"{f}: unreadable tokenizer ({exc})") from exc
    cfg = cfg or {}
    bos = tok.token_to_id("<|begin_of_text|>")
    eos = tok.token_to_id("<|end_of_text|>")
    bos = bos if bos is not None else cfg.get("bos_token_id", 128000)
    eos = eos if eos is not None else cfg.get("eos_token_id") or 128001
    return tok, int(bos), int(eos if not isinstance(eos, list) else eos[0])


# ----------------------------------------------------------------------------- entry point


def _check_shapes(model: CSM, sd: dict[str, Tensor], where: Path) -> None:
    own = model.state_dict()
    for k, v in sd.items():
        if k not in own:
            raise CheckpointError(f"{where}: unexpected tensor {k!r}")
        if tuple(own[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{where}: tensor {k!r} has shape {tuple(v.shape)} but config.json implies {tuple(own[k].shape)}; "
                "the config and weights do not belong together"
            )
    missing = [k for k in own if k not in sd]
    if missing:
        raise CheckpointError(f"{where}: missing tensors {missing[:3]}…")


def load_checkpoint(
    path_or_repo_id: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    tokenizer: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> Checkpoint:
    """Load either layout from a directory, a weights file or a hub repo id."""
    root = resolve(path_or_repo_id, local_files_only)
    d = root if root.is_dir() else root.parent
    cfg = _read_json(d / "config.json") if (d / "config.json").is_file() else {}
    weights = _find_weights(d) if root.is_dir() else root
    sd = _read_weights(weights)
    if cfg.get("model_type") == "csm" or "lm_head.weight" in sd:
        if cfg.get("model_type") != "csm":
            raise CheckpointError(
                f"{d}/config.json: missing or not model_type 'csm'; it is needed for transformers-format weights"
            )
        layout, args = "transformers", args_from_hf_config(cfg)
        ours = convert_hf_state_dict(sd, args, weights)
        codec_state = {k.removeprefix("codec_model."): v for k, v in sd.items() if k.startswith("codec_model.")} or None
        codec_config = cfg.get("codec_config")
    elif "codebook0_head.weight" in sd or "_orig_mod.codebook0_head.weight" in sd:
        layout, args = "sesame", args_from_sesame_config(cfg)
        ours = convert_sesame_state_dict(sd, args, weights)
        codec_state, codec_config = None, None
    else:
        raise CheckpointError(
            f"{weights}: unknown checkpoint format (neither transformers CSM nor original Sesame layout)"
        )
    del sd
    with torch.device("meta"):
        model = CSM(args)
    _check_shapes(model, ours, weights)
    # assign=True adopts the loaded tensors instead of copying into fresh ones (halves peak RAM).
    model.load_state_dict(ours, strict=False, assign=True)
    _init_buffers(model, "cpu")
    model = model.to(device=device, dtype=dtype).eval()
    _init_buffers(model, device)
    tok_src = Path(resolve(tokenizer, local_files_only)) if tokenizer else d
    tok, bos, eos = load_tokenizer(tok_src, cfg)
    log.info("loaded CSM (%s layout) from %s on %s/%s", layout, d, device, dtype)
    return Checkpoint(model, layout, d, tok, bos, eos, codec_config, codec_state)


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
