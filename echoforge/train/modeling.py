"""The CSM training forward and loss, over the *same* modules our inference model uses.

Training calls the inference forward itself (``Transformer.forward`` of
:class:`echoforge.csm.model.CSM`), with its KV caches dropped (:func:`prepare_for_training`):
without caches a stack attends over the whole sequence (causal), calls each block through
``nn.Module.__call__`` so FSDP2 / checkpointing hooks fire, and recomputes blocks in backward
when ``grad_ckpt`` is set. There is no second copy of the model's maths, and a trained state
dict is the inference state dict.

Sequence layout (``echoforge.csm.prompt.segment_rows``, the generator's layout): each segment is text rows
``<bos>[{speaker}]{text}<eos>`` followed by its audio frames and one all-zero frame (EOS).
A row is 33 columns (32 codebooks + text) with a mask. The backbone state at row ``t``
predicts codebook 0 of row ``t+1``; the depth decoder, fed ``[proj(h_t), c0, .., c30]``
of row ``t+1``, predicts codebooks 1..31. Only rows whose *next* row is an audio frame are
scored (text positions are masked), and the decoder runs on a random subset of those frames
(compute amortization, 1/16 in Sesame's paper).

Export: :func:`export_checkpoint` writes ``config.json`` (``model_type: csm``),
``model.safetensors`` with transformers' key names (codec weights copied from the source
checkpoint) and the tokenizer files, i.e. a directory ``CSMGenerator.from_pretrained`` loads.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from echoforge.csm.layouts import layout_of
from echoforge.csm.model import CSM, CSMArgs, ModelArgs, Transformer
from echoforge.csm.weights import read_headers, weight_sets

# ----------------------------------------------------------------------------- training forward


def prepare_for_training(model: CSM, grad_ckpt: bool = False) -> CSM:
    """Drop every KV cache (in place; returns ``model``): the stacks then run whole sequences."""
    for stack in (model.backbone, model.decoder):
        stack.drop_caches()
        stack.grad_ckpt = grad_ckpt
    model.max_batch_size = 0
    return model


def run_causal(stack: Transformer, x: Tensor) -> Tensor:
    """The stack's own forward over full sequences ``x [B, T, dim]`` at positions ``0..T-1`` (causal).

    Sequences are right-padded, so padding never precedes real tokens and plain causal attention
    suffices (``mask=None, kv_len=T``: SDPA's ``is_causal`` path, flash attention on CUDA).
    """
    t = x.shape[1]
    return stack(x, torch.arange(t, device=x.device), None, t)


@dataclass
class LossOutput:
    """Sums (not means) so the trainer can normalise by counts over ranks and micro-batches."""

    c0_loss_sum: Tensor  # scalar, CE summed over scored frames
    c0_correct: Tensor  # scalar, argmax hits (teacher-forced accuracy numerator)
    c0_count: int  # scored frames
    dec_loss_sum: Tensor  # scalar, CE summed over (decoder frame, codebook 1..31)
    dec_correct: Tensor
    dec_count: int  # decoder frames (each contributes K-1 predictions)


class CSMForTraining(nn.Module):
    """Wraps :class:`CSM` with a ``forward`` (DDP / FSDP2 need one on the root module).

    The wrapped model is ``self.csm``; its state dict keys are therefore ``csm.*``.
    """

    def __init__(self, csm: CSM, grad_ckpt: bool = False):
        super().__init__()
        self.csm = prepare_for_training(csm, grad_ckpt)
        self.grad_ckpt = grad_ckpt
        self.decoder_calls = 0  # frames ever sent through the depth decoder (tests count this)

    def forward(self, tokens: Tensor, tokens_mask: Tensor, c0_mask: Tensor, dec_rows: Tensor) -> LossOutput:
        """Teacher-forced losses for one micro-batch.

        Args:
            tokens: ``[B, T, K+1]`` long, rows as in the generator's prompt (right-padded).
            tokens_mask: ``[B, T, K+1]`` bool.
            c0_mask: ``[B, T-1]`` bool, True where row ``t+1`` is a scored audio frame.
            dec_rows: ``[N, 2]`` long ``(b, t)`` positions (subset of ``c0_mask``) whose next
                frame also trains the depth decoder.
        """
        m, k = self.csm, self.csm.args.audio_num_codebooks
        h = run_causal(m.backbone, m.embed_tokens(tokens, tokens_mask))  # [B, T, D]
        h, targets = h[:, :-1], tokens[:, 1:, :k]  # state at t predicts frame t+1: [B, T-1, D], [B, T-1, K]

        # Codebook 0 on every scored frame.
        h_sel, tgt = h[c0_mask], targets[c0_mask]  # [M, D], [M, K]
        logits0 = m.codebook0_head(h_sel).float()  # [M, V]
        c0_loss = F.cross_entropy(logits0, tgt[:, 0], reduction="sum")
        c0_correct = (logits0.argmax(-1) == tgt[:, 0]).sum()

        # Depth decoder only on the chosen frames: [proj(h), c0, .., c_{K-2}] -> codebooks 1..K-1.
        n = dec_rows.shape[0]
        self.decoder_calls += n
        if n == 0:
            zero = h.sum() * 0.0  # keeps every parameter in the graph (DDP needs identical graphs)
            return LossOutput(c0_loss, c0_correct, int(tgt.shape[0]), zero, zero.detach(), 0)
        hd = h[dec_rows[:, 0], dec_rows[:, 1]]  # [N, D]
        codes = targets[dec_rows[:, 0], dec_rows[:, 1]]  # [N, K]
        emb = m.audio_embeddings(codes[:, :-1] + m.codebook_offsets[:-1])  # [N, K-1, D]
        x = m.projection(torch.cat([hd[:, None], emb], dim=1))  # [N, K, dec_dim]
        out = run_causal(m.decoder, x)[:, 1:]  # position i predicts codebook i: [N, K-1, dec_dim]
        logits = torch.einsum("nkd,kdv->nkv", out, m.audio_head.to(out.dtype)).float()  # [N, K-1, V]
        dec_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes[:, 1:].reshape(-1), reduction="sum")
        dec_correct = (logits.argmax(-1) == codes[:, 1:]).sum()
        return LossOutput(c0_loss, c0_correct, int(tgt.shape[0]), dec_loss, dec_correct, n)


def combine_losses(out: LossOutput, n_c0: int, n_dec: int, decoder_weight: float, num_codebooks: int) -> Tensor:
    """The scalar objective: mean c0 CE + ``decoder_weight`` * mean decoder CE.

    ``n_c0`` / ``n_dec`` are the counts over the *whole optimizer step* (all micro-batches,
    all ranks), so the loss of a step is the same however it is split.
    """
    loss = out.c0_loss_sum / max(n_c0, 1)
    if n_dec > 0:
        loss = loss + decoder_weight * out.dec_loss_sum / (n_dec * (num_codebooks - 1))
    return loss


# ----------------------------------------------------------------------------- building models


def init_weights(model: CSM, std: float = 0.02) -> None:
    """Fresh initialisation for from-scratch training (GPT-2 / Llama style small normals)."""
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            nn.init.ones_(p)
        else:
            nn.init.normal_(p, mean=0.0, std=std)


def count_parameters(args: CSMArgs) -> dict[str, int]:
    """Parameter counts without building the model (used to validate scaling configs)."""

    def stack(a: ModelArgs) -> int:
        q, kv = a.n_head * a.head_dim, a.n_local_heads * a.head_dim
        per_layer = a.dim * (q + 2 * kv) + q * a.dim + 3 * a.dim * a.intermediate_size + 2 * a.dim
        return a.n_layer * per_layer + a.dim

    bb, dec, k, v = args.backbone, args.decoder, args.audio_num_codebooks, args.audio_vocab_size
    out = {
        "backbone": stack(bb),
        "decoder": stack(dec),
        "text_embeddings": args.text_vocab_size * bb.dim,
        "audio_embeddings": k * v * bb.dim,
        "heads": bb.dim * v + (k - 1) * dec.dim * v + bb.dim * dec.dim,
    }
    out["total"] = sum(out.values())
    return out


# ----------------------------------------------------------------------------- LoRA


class LoRADelta(nn.Module):
    """LoRA as a weight parametrization: ``W = W0 + (alpha / r) * B @ A``.

    Our inference layers call ``F.linear(x, module.weight)`` (not ``module(x)``), so adapters
    that wrap a module's ``forward`` (peft's ``LoraLayer``) would be bypassed. A
    ``torch.nn.utils.parametrize`` parametrization is applied wherever ``.weight`` is read,
    so the same inference code trains the adapter. The trade-off: the weight gradient
    ``dW`` is formed transiently (full-size matmul) before flowing into A and B; optimizer
    state is still only A and B. Input dropout does not exist in this weight-space form.
    """

    def __init__(self, out_features: int, in_features: int, r: int, alpha: float):
        super().__init__()
        self.scale = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))  # zero: training starts at W0 exactly
        nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)  # as nn.Linear / peft

    def forward(self, w: Tensor) -> Tensor:
        return w + self.scale * (self.lora_B @ self.lora_A).to(w.dtype)


def apply_lora(model: CSM, r: int, alpha: float, target_modules: list[str]) -> int:
    """Add :class:`LoRADelta` to every ``nn.Linear`` whose name ends with one of ``target_modules``
    (e.g. ``wqkv``, ``wo``, ``w1``, ``w3``, ``w2``); freeze all other weights. Returns trainable params."""
    from torch.nn.utils import parametrize

    for p in model.parameters():
        p.requires_grad = False
    n = 0
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.Linear) and name.split(".")[-1] in target_modules:
            out_f, in_f = mod.weight.shape
            delta = LoRADelta(out_f, in_f, r, alpha).to(mod.weight.device)
            parametrize.register_parametrization(mod, "weight", delta)
            n += delta.lora_A.numel() + delta.lora_B.numel()
    if n == 0:
        raise ValueError(f"lora.target_modules {target_modules} matched no nn.Linear")
    return n


def merge_lora_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict of a LoRA-parametrized CSM -> plain ``CSM`` names with ``W0 + s * B @ A`` merged.

    Parametrized weights appear as ``X.parametrizations.weight.original`` and
    ``X.parametrizations.weight.0.lora_{A,B}``; the scale ``alpha / r`` is stored nowhere
    in the state dict, so it is passed as ``X.parametrizations.weight.0.scale`` by the caller
    (:func:`lora_scales`).
    """
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if ".parametrizations.weight.0." in k:
            continue
        if k.endswith(".parametrizations.weight.original"):
            prefix = k.removesuffix(".parametrizations.weight.original")
            a = state[f"{prefix}.parametrizations.weight.0.lora_A"].float()  # [r, in]
            b = state[f"{prefix}.parametrizations.weight.0.lora_B"].float()  # [out, r]
            scale = float(state[f"{prefix}.parametrizations.weight.0.scale"])
            v = (v.float() + scale * (b @ a)).to(v.dtype)
            k = f"{prefix}.weight"
        out[k] = v
    return out


def lora_scales(model: nn.Module) -> dict[str, Tensor]:
    """``{"<linear>.parametrizations.weight.0.scale": tensor(alpha / r)}`` for :func:`merge_lora_state`."""
    return {f"{name}.scale": torch.tensor(m.scale) for name, m in model.named_modules() if isinstance(m, LoRADelta)}


# ----------------------------------------------------------------------------- export


def to_hf_state_dict(sd: dict[str, Tensor], args: CSMArgs, audio_keys: tuple[str, ...]) -> dict[str, Tensor]:
    """Our names -> transformers ``CsmForConditionalGeneration`` names (inverse of the loader's map).

    ``audio_keys``: the name(s) the tied audio embedding table is stored under (transformers
    saves it once, as ``depth_decoder.model.embed_tokens.weight``).
    """
    out = {
        "embed_text_tokens.weight": sd["text_embeddings.weight"],
        "lm_head.weight": sd["codebook0_head.weight"],
        "depth_decoder.model.inputs_embeds_projector.weight": sd["projection.weight"],
        "depth_decoder.codebooks_head.weight": sd["audio_head"],
        "backbone_model.norm.weight": sd["backbone.norm.weight"],
        "depth_decoder.model.norm.weight": sd["decoder.norm.weight"],
    }
    for key in audio_keys:
        out[key] = sd["audio_embeddings.weight"]
    for ours, theirs, a in (
        ("backbone", "backbone_model", args.backbone),
        ("decoder", "depth_decoder.model", args.decoder),
    ):
        q_dim, kv_dim = a.n_head * a.head_dim, a.n_local_heads * a.head_dim
        for i in range(a.n_layer):
            p, t = f"{ours}.layers.{i}", f"{theirs}.layers.{i}"
            q, k, v = sd[f"{p}.attention.wqkv.weight"].split([q_dim, kv_dim, kv_dim])
            if f"{p}.feed_forward.w13.weight" in sd:  # fused gate+up (earlier model.py layout)
                gate, up = sd[f"{p}.feed_forward.w13.weight"].split(a.intermediate_size)
            else:
                gate, up = sd[f"{p}.feed_forward.w1.weight"], sd[f"{p}.feed_forward.w3.weight"]
            out.update({
                f"{t}.self_attn.q_proj.weight": q,
                f"{t}.self_attn.k_proj.weight": k,
                f"{t}.self_attn.v_proj.weight": v,
                f"{t}.self_attn.o_proj.weight": sd[f"{p}.attention.wo.weight"],
                f"{t}.mlp.gate_proj.weight": gate,
                f"{t}.mlp.up_proj.weight": up,
                f"{t}.mlp.down_proj.weight": sd[f"{p}.feed_forward.w2.weight"],
                f"{t}.input_layernorm.weight": sd[f"{p}.attention_norm.weight"],
                f"{t}.post_attention_layernorm.weight": sd[f"{p}.ffn_norm.weight"],
            })  # fmt: skip
    return {k: v.detach().contiguous() for k, v in out.items()}


def _hf_stack_config(a: ModelArgs) -> dict:
    rope = {"rope_type": "default", "rope_theta": a.rope_base}
    if a.rope_scaling:
        rope = {"rope_type": "llama3", "rope_theta": a.rope_base, **a.rope_scaling}
    return {
        "num_hidden_layers": a.n_layer,
        "num_attention_heads": a.n_head,
        "num_key_value_heads": a.n_local_heads,
        "hidden_size": a.dim,
        "intermediate_size": a.intermediate_size,
        "head_dim": a.head_dim,
        "rms_norm_eps": a.norm_eps,
        "rope_parameters": rope,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
    }


def hf_config(args: CSMArgs, base: dict | None = None) -> dict:
    """A transformers ``config.json`` dict for ``args``, keeping every other field of ``base``."""
    cfg = dict(base or {})
    cfg.update(_hf_stack_config(args.backbone))
    cfg.pop("rope_theta", None), cfg.pop("rope_scaling", None)  # superseded by rope_parameters
    cfg.update({
        "model_type": "csm",
        "architectures": ["CsmForConditionalGeneration"],
        "max_position_embeddings": args.backbone.max_seq_len,
        "text_vocab_size": args.text_vocab_size,
        "vocab_size": args.audio_vocab_size,
        "num_codebooks": args.audio_num_codebooks,
    })  # fmt: skip
    dec = dict(cfg.get("depth_decoder_config") or {})
    dec.update(_hf_stack_config(args.decoder))
    dec.update({
        "model_type": "csm_depth_decoder_model",
        "backbone_hidden_size": args.backbone.dim,
        "num_codebooks": args.audio_num_codebooks,
        "vocab_size": args.audio_vocab_size,
        "max_position_embeddings": args.audio_num_codebooks + 1,
    })  # fmt: skip
    cfg["depth_decoder_config"] = dec
    return cfg


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "ckpt.pt", "model.pt", "pytorch_model.bin")


def export_checkpoint(state: dict[str, Tensor], args: CSMArgs, out_dir: Path | str, source: Path | str | None,
                      extra_files: dict[str, str] | None = None) -> Path:  # fmt: skip
    """Write a transformers-format CSM directory that ``CSMGenerator.from_pretrained`` loads.

    Args:
        state: our state dict (``CSM.state_dict()`` names, LoRA already merged).
        args: the model's shapes (for config.json and the q/k/v split).
        out_dir: destination directory (created; files inside are replaced).
        source: a transformers-format CSM directory whose codec weights (``codec_model.*``),
            tokenizer files and other config fields are carried over. Without one the output
            has no bundled codec (the generator then falls back to ``kyutai/mimi``).
        extra_files: ``{name: text}`` written next to the weights (e.g. the training config).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_cfg: dict = {}
    extra: dict[str, Tensor] = {}
    audio_keys: tuple[str, ...] = ("depth_decoder.model.embed_tokens.weight",)
    src = Path(source) if source else None
    if src is not None:
        if (src / "config.json").is_file():
            base_cfg = json.loads((src / "config.json").read_text())
        # The source's transformers-format weights (e.g. sesame/csm-1b's transformers-0000N-of-00002
        # shards named by `transformers_weights`, or model.safetensors), every shard of them.
        for ws in weight_sets(src, base_cfg):
            if ws.files[0].suffix != ".safetensors":
                continue
            keys = list(read_headers(ws))
            if layout_of(keys) != "transformers":
                continue
            for file in ws.files:
                with safe_open(str(file), "pt") as f:
                    # The codec (and anything else we do not train) is copied verbatim.
                    extra |= {k: f.get_tensor(k) for k in f.keys() if k.startswith("codec_model.")}
            found = tuple(k for k in ("backbone_model.embed_tokens.embed_audio_tokens.weight",
                                      "depth_decoder.model.embed_tokens.weight") if k in keys)  # fmt: skip
            audio_keys = found or audio_keys
            break
        base_cfg.pop("transformers_weights", None)  # the export is one model.safetensors
        for f in src.iterdir():  # tokenizer, generation config, chat template …
            if (
                f.is_file()
                and f.name not in _WEIGHT_FILES
                and f.name != "config.json"
                and not f.name.endswith((".safetensors", ".safetensors.index.json"))
            ):
                shutil.copy2(f, out / f.name)
    if not extra:
        base_cfg.pop("codec_config", None)  # no bundled codec weights -> do not claim one
    hf = to_hf_state_dict({k: v.detach().cpu() for k, v in state.items()}, args, audio_keys)
    # safetensors refuses tensors that share storage (q/k/v are views of one wqkv): clone.
    tensors = {k: v.clone() for k, v in hf.items()} | extra
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(args, base_cfg), indent=2))
    for name, text in (extra_files or {}).items():
        (out / name).write_text(text)
    return out
