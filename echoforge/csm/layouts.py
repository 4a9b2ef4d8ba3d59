"""The two CSM checkpoint layouts and how their tensors map onto :class:`echoforge.csm.model.CSM`.

* **transformers** (``CsmForConditionalGeneration``): ``backbone_model.*``, ``depth_decoder.*``,
  ``embed_text_tokens``, ``lm_head``, with the Mimi codec bundled under ``codec_model.*``.
* **original Sesame** (torchtune names): ``backbone.layers.N.attn.q_proj`` … ``sa_norm.scale``,
  ``text_embeddings``, ``audio_embeddings``, ``projection``, ``codebook0_head``, ``audio_head``;
  no codec. Torchtune's RoPE rotates interleaved pairs while ours rotates halves, so q/k rows
  are permuted on load (and back in :func:`export_sesame_state_dict`).

Here: which layout a set of tensor names is (:func:`layout_of`), model arguments from either
``config.json`` (:func:`args_from_hf_config`, :func:`args_from_sesame_config`), the tensor map
(:func:`tensor_specs`, :func:`combine`) and whole state-dict conversion / export. Nothing here
reads files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from echoforge.csm.model import CSM, CSMArgs, ModelArgs, transformer_configs
from echoforge.csm.weights import CheckpointError


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

