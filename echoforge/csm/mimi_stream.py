"""Mimi's truly streaming decoder, and one decode call for many streams' chunks.

transformers can stream only Mimi's *encoder* (a conv padding cache), so
:class:`StreamingDecoder` keeps its own state for every part of the decoder:

* dequantisation (embedding lookup + 1x1 projection) is per frame: no state;
* ``upsample`` and the SEANet ``ConvTranspose1d`` layers: the last ``kernel - stride``
  output samples of each call are an unfinished overlap-add tail, added to the start of
  the next call's output (the full decode trims exactly that tail from the right end);
* causal ``Conv1d`` layers: the last ``(kernel - 1) * dilation`` input samples, which
  stand in for the left zero padding of the full decode;
* the decoder transformer: a key/value cache of the sliding window (``sliding_window - 1``
  past positions, always that long: columns before the stream's first step are masked), with
  absolute RoPE positions.

All of it is one function of explicit state, :meth:`DecoderGraph.step`, whose shapes depend only on
the rows and the chunk length: so each ``decode(codes[n])`` call costs O(n) (plus attention over one
window), whatever was decoded before; the concatenated chunks equal ``MimiCodec.decode`` of all
codes up to float rounding; :func:`decode_batch` runs one call for several streams' decoders, and
:mod:`echoforge.csm.mimi_batch` keeps many streams' states in fixed per-slot buffers and compiles it.
transformers' Mimi building blocks are imported where they are used, as in :mod:`echoforge.csm.mimi`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from echoforge.csm.mimi import MimiCodec


class _Conv:
    """Causal stride-1 ``MimiConv1d``: its state is the last ``(kernel-1)*dilation`` inputs ``[B, C_in, context]``
    (zeros: the full decode's left zero padding)."""

    def __init__(self, m: nn.Module):
        conv = m.conv
        if conv.stride[0] != 1:
            raise ValueError("streaming decode supports stride-1 convolutions only (all of Mimi's decoder)")
        if not m.causal:
            raise ValueError("streaming decode needs a causal Mimi (use_causal_conv=True)")
        if m.pad_mode not in ("constant", "zeros"):
            raise ValueError(f"streaming decode needs zero padding, not pad_mode={m.pad_mode!r}")
        self.conv = conv
        self.context = (conv.kernel_size[0] - 1) * conv.dilation[0]
        self.state_shape = (conv.in_channels, self.context)

    def __call__(self, x: Tensor, prev: Tensor) -> tuple[Tensor, Tensor]:  # [B, C_in, n] -> [B, C_out, n], state
        x = torch.cat([prev, x], dim=-1)
        return self.conv(x), x[..., x.shape[-1] - self.context :]


class _ConvTranspose:
    """Causal ``MimiConvTranspose1d`` (right trim): its state is the unfinished overlap-add tail of the last
    call ``[B, C_out, kernel - stride]`` (bias not added), summed into the start of the next call's output."""

    def __init__(self, m: nn.Module):
        conv = m.conv
        self.stride = conv.stride[0]
        self.kernel = conv.kernel_size[0]
        if not m.causal or m.padding_left != 0 or m.padding_right != self.kernel - self.stride:
            raise ValueError("streaming decode needs causal transposed convs trimmed on the right (trim_right_ratio=1)")
        if conv.dilation[0] != 1 or conv.padding[0] != 0 or conv.output_padding[0] != 0:
            raise ValueError("streaming decode supports plain transposed convs only")
        self.conv = conv
        self.state_shape = (conv.out_channels, self.kernel - self.stride)

    def __call__(self, x: Tensor, tail: Tensor) -> tuple[Tensor, Tensor]:  # [B, C_in, n] -> [B, C_out, n * stride]
        conv = self.conv
        # Without bias: the tail is summed into the next call and must not carry the bias twice.
        y = F.conv_transpose1d(x, conv.weight, None, self.stride, groups=conv.groups)  # [B, C_out, (n-1)*s + k]
        done = x.shape[-1] * self.stride
        y[..., : tail.shape[-1]] += tail
        tail = y[..., done:].clone()
        y = y[..., :done]
        return (y if conv.bias is None else y + conv.bias[:, None]), tail


class DecoderGraph:
    """Mimi's decoder as one function of explicit state: :meth:`step` ``(codes, start, state) -> (audio, state)``.

    A stream's state is a flat list of tensors with a leading row dimension, in a fixed order: every
    convolution's context or tail (:attr:`n_conv` of them), then each transformer layer's keys, then
    its values, ``[rows, H_kv, sliding_window - 1, head_dim]`` each (always full: columns before the
    stream's first step are masked). Every shape depends only on the rows, so states of many streams
    stack into one batch, and live in fixed per-slot buffers for a compiled step
    (:mod:`echoforge.csm.mimi_batch`). One per codec (:attr:`MimiCodec.decoder_graph`).
    """

    def __init__(self, codec: MimiCodec):
        from transformers.models.mimi.modeling_mimi import MimiConv1d, MimiConvTranspose1d, MimiResnetBlock

        dec = codec.model.decoder
        if dec is None:
            raise ValueError("this Mimi has no decoder")
        self.quantizer = codec.model.quantizer
        # transformers computes a codebook's table on first use and caches it on the module (``_embed``):
        # compute them now, so a traced step reads fixed tensors instead of tracing (and guarding on) the fill.
        with torch.no_grad():
            self.codebooks: list[Tensor] = [m.embed for m in self.quantizer.modules() if hasattr(m, "embed_sum")]
        self.frame_size = codec.frame_size
        tm = dec.decoder_transformer
        self.tm = tm
        window = tm.config.sliding_window
        if not window or window < 2:
            raise ValueError(f"streaming decode needs Mimi's sliding-window attention, not sliding_window={window!r}")
        self.window = int(window)
        self.upsample = _ConvTranspose(dec.upsample) if dec.upsample is not None else None
        self.steps_per_frame = self.upsample.stride if self.upsample is not None else 1
        stateful: list[Any] = [] if self.upsample is None else [self.upsample]

        def wrap(m: nn.Module) -> Any:  # a stride-1 conv without context (kernel 1) has no state
            if isinstance(m, MimiConv1d):
                c = _Conv(m)
                if not c.context:
                    return m.conv
                stateful.append(c)
                return c
            if isinstance(m, MimiConvTranspose1d):
                stateful.append(_ConvTranspose(m))
                return stateful[-1]
            return m  # activations (ELU), identity: pointwise

        # SEANet as callables mirroring MimiDecoder.forward; a resnet block as (block layers, [shortcut]).
        self.seanet: list[Any] = []
        for layer in dec.decoder_seanet.layers:
            if isinstance(layer, MimiResnetBlock):
                block = [wrap(m) for m in layer.block]
                self.seanet.append((block, [wrap(layer.shortcut)]))
            else:
                self.seanet.append(wrap(layer))
        self.n_conv = len(stateful)
        self._conv_shapes = [s.state_shape for s in stateful]
        cfg = tm.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.kv_shape = (cfg.num_key_value_heads, self.window - 1, head_dim)
        self.n_layers = len(tm.layers)

    def zeros(self, rows: int, device: torch.device) -> list[Tensor]:
        """The state of ``rows`` fresh streams."""
        shapes = self._conv_shapes + [self.kv_shape] * (2 * self.n_layers)
        return [torch.zeros(rows, *s, device=device) for s in shapes]

    def step(self, codes: Tensor, start: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """``codes [B, n, K]`` of ``B`` streams, ``start [B]`` the transformer steps each has decoded before
        (``steps_per_frame`` per frame), their ``state`` -> audio ``[B, n * frame_size]`` and the state after.

        Pure tensor code of fixed shapes (no host reads): traceable whole by ``torch.compile``.
        """
        new: list[Tensor] = []
        conv = iter(state[: self.n_conv])
        x = self.quantizer.decode(codes.transpose(1, 2))  # [B, hidden, n]
        if self.upsample is not None:
            x, s = self.upsample(x, next(conv))  # [B, hidden, n * steps_per_frame]
            new.append(s)
        h, kv = self._transformer(x.transpose(1, 2), start, state[self.n_conv :])
        x = self._seanet(self.seanet, h.transpose(1, 2), conv, new)  # [B, 1, n * frame_size]
        return x.reshape(x.shape[0], -1), new + kv

    def _seanet(self, layers: list[Any], x: Tensor, conv: Any, new: list[Tensor]) -> Tensor:
        for layer in layers:
            if isinstance(layer, tuple):  # resnet block: block(x) + shortcut(x)
                block, short = layer
                h = self._seanet(block, x, conv, new)
                x = self._seanet(short, x, conv, new) + h
            elif isinstance(layer, (_Conv, _ConvTranspose)):  # noqa: UP038 - a tuple: dynamo traces it
                x, s = layer(x, next(conv))
                new.append(s)
            else:
                x = layer(x)
        return x

    def _transformer(self, x: Tensor, start: Tensor, kv: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The decoder transformer over ``x [B, n, C]``, row ``b`` at absolute positions ``start[b]..``, each
        layer's keys and values after the row's cached ``sliding_window - 1`` ones (masked before the
        stream's first step): the mask of the full decode, query ``p`` seeing keys in ``(p - window, p]``."""
        tm, w = self.tm, self.window
        past, n = w - 1, x.shape[1]
        kv_pos = start[:, None] - past + torch.arange(past + n, device=x.device)  # [B, P + n] key positions
        qpos = kv_pos[:, past:]  # [B, n]
        rel = kv_pos[:, None, :] - qpos[:, :, None]  # [B, n, P + n]
        mask = ((kv_pos >= 0)[:, None, :] & (rel <= 0) & (rel > -w))[:, None]  # [B, 1, n, P + n]
        cos, sin = tm.rotary_emb(x, qpos)  # [B, n, D]
        keys, values = [], []
        for i, layer in enumerate(tm.layers):
            q, k, v = _rotated_qkv(layer, x, cos, sin)
            k = torch.cat([kv[i], k], dim=2)  # [B, H_kv, P + n, D]
            v = torch.cat([kv[self.n_layers + i], v], dim=2)
            keys.append(k[:, :, n:])
            values.append(v[:, :, n:])
            x = _attend_and_mlp(layer, x, q, k, v, mask)
        return x, keys + values


class StreamingDecoder:
    """Stateful incremental Mimi decoder: ``decode(codes[n, K]) -> audio[n * 1920]``.

    The concatenation of all outputs equals ``MimiCodec.decode`` of the concatenated codes
    (up to float rounding). Work per call depends only on ``n`` (attention looks back at
    most one sliding window). Not thread-safe; use one per stream.

    Attributes:
        frames_decoded: frames fed since the last :meth:`reset`.
        last_call_steps: transformer steps computed by the last call (``n * latent_stride``).
        state: the stream's :class:`DecoderGraph` state (None before the first call).
    """

    def __init__(self, codec: MimiCodec):
        self.codec = codec
        self.graph: DecoderGraph = codec.decoder_graph
        self.reset()

    def reset(self) -> None:
        """Forget all state; the next call starts a new stream."""
        self.state: list[Tensor] | None = None
        self.frames_decoded = 0
        self.last_call_steps = 0

    @property
    def steps(self) -> int:
        """Transformer steps decoded so far (the RoPE position of the next one)."""
        return self.frames_decoded * self.graph.steps_per_frame

    @property
    def cache_len(self) -> int:
        """Past transformer positions the attention can see (bounded by ``sliding_window - 1``)."""
        return min(self.steps, self.graph.window - 1)

    @torch.inference_mode()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``[n, K]`` -> the next ``n * 1920`` audio samples (1-D float)."""
        codes = self.codec._check_codes(codes)
        if codes.shape[0] == 0:
            return torch.zeros(0, device=self.codec.device)
        return _advance([self], codes[None])[0]


@torch.inference_mode()
def decode_batch(decoders: list[StreamingDecoder], codes: Tensor) -> list[Tensor]:
    """Many streams' next chunks in one call: ``codes [B, n, K]`` (row ``b`` for ``decoders[b]``).

    The decoders' states are stacked into one batch (every state has the same shape), advanced by
    one :meth:`DecoderGraph.step` and handed back row by row, so each decoder advances exactly as if
    it had decoded its own row alone and the audio equals per-stream :meth:`StreamingDecoder.decode`
    up to float rounding. Streams may be at different points (different frames decoded); all rows
    of one call have the same ``n``.

    Returns: per decoder, its ``n * 1920`` audio samples (1-D float, on the codec's device).
    """
    if not decoders:
        return []
    codec = decoders[0].codec
    if any(d.codec is not codec for d in decoders):
        raise ValueError("decode_batch: every decoder must belong to the same codec")
    b, n = codes.shape[0], codes.shape[1]
    if b != len(decoders):
        raise ValueError(f"decode_batch: {len(decoders)} decoders but {b} rows of codes")
    codes = codec._check_codes(codes.reshape(b * n, -1)).view(b, n, -1)  # [B, n, K] on the codec's device
    if n == 0:
        return [torch.zeros(0, device=codec.device) for _ in decoders]
    return _advance(decoders, codes)


def _advance(decoders: list[StreamingDecoder], codes: Tensor) -> list[Tensor]:
    """:func:`decode_batch` of checked ``codes [B, n>0, K]`` on the codec's device."""
    b, n = codes.shape[0], codes.shape[1]
    graph, dev = decoders[0].graph, decoders[0].codec.device
    for d in decoders:
        if d.state is None:
            d.state = graph.zeros(1, dev)
    state = [torch.cat(rows) for rows in zip(*(d.state for d in decoders), strict=True)] if b > 1 else decoders[0].state
    start = torch.tensor([d.steps for d in decoders], device=dev)
    audio, state = graph.step(codes, start, state)
    for i, d in enumerate(decoders):  # hand each row's state back
        d.state = [s[i : i + 1] for s in state]
        d.frames_decoded += n
        d.last_call_steps = n * graph.steps_per_frame
    return list(audio)


def _rotated_qkv(layer: nn.Module, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One decoder-transformer layer's q ``[B, H, n, D]``, k and v ``[B, H_kv, n, D]`` for ``x [B, n, dim]``,
    q and k rotated by ``cos`` / ``sin``."""
    from transformers.models.mimi.modeling_mimi import apply_rotary_pos_emb  # transformers: see the module docstring

    attn = layer.self_attn
    b, n = x.shape[0], x.shape[1]
    h = layer.input_layernorm(x)
    q = attn.q_proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q, k, v


def _attend_and_mlp(layer: nn.Module, x: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """The rest of one decoder-transformer layer once q ``[B, H, n, D]`` and the cached k, v
    ``[B, H_kv, S, D]`` are known: attention under ``mask``, output projection, MLP, residuals."""
    attn = layer.self_attn
    b, n = x.shape[0], x.shape[1]
    rep = attn.num_key_value_groups
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling)  # [B, H, n, D]
    o = attn.o_proj(o.transpose(1, 2).reshape(b, n, -1))
    x = x + layer.self_attn_layer_scale(o)
    return x + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(x)))
