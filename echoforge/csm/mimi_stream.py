"""Mimi's truly streaming decoder, and one decode call for many streams' chunks.

transformers can stream only Mimi's *encoder* (a conv padding cache), so
:class:`StreamingDecoder` keeps its own state for every part of the decoder:

* dequantisation (embedding lookup + 1x1 projection) is per frame: no state;
* ``upsample`` and the SEANet ``ConvTranspose1d`` layers: the last ``kernel - stride``
  output samples of each call are an unfinished overlap-add tail, added to the start of
  the next call's output (the full decode trims exactly that tail from the right end);
* causal ``Conv1d`` layers: the last ``(kernel - 1) * dilation`` input samples, which
  stand in for the left zero padding of the full decode;
* the decoder transformer: a key/value cache cut to the sliding window (``sliding_window
  - 1`` past positions), with absolute RoPE positions.

So each ``decode(codes[n])`` call costs O(n) (plus attention over at most one window),
whatever was decoded before, and the concatenated chunks equal ``MimiCodec.decode`` of all
codes up to float rounding. :func:`decode_batch` runs one call for several streams' decoders.
transformers' Mimi building blocks are imported where they are used, as in :mod:`echoforge.csm.mimi`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from echoforge.csm.mimi import MimiCodec


class _ConvState:
    """Causal stride-1 ``MimiConv1d``: keeps the last ``(kernel-1)*dilation`` inputs as left context."""

    def __init__(self, m: nn.Module):
        conv = m.conv
        if conv.stride[0] != 1:
            raise ValueError("streaming decode supports stride-1 convolutions only (all of Mimi's decoder)")
        if not m.causal:
            raise ValueError("streaming decode needs a causal Mimi (use_causal_conv=True)")
        if m.pad_mode not in ("constant", "zeros"):
            raise ValueError(f"streaming decode needs zero padding, not pad_mode={m.pad_mode!r}")
        self.m = m
        self.context = (conv.kernel_size[0] - 1) * conv.dilation[0]
        self.prev: Tensor | None = None  # [B, C_in, context]

    def __call__(self, x: Tensor) -> Tensor:  # [B, C_in, n] -> [B, C_out, n]
        if self.context == 0:
            return self.m.conv(x)
        if self.prev is None:  # the full decode's left zero padding
            self.prev = x.new_zeros(x.shape[0], x.shape[1], self.context)
        x = torch.cat([self.prev, x], dim=-1)
        self.prev = x[..., -self.context :]
        return self.m.conv(x)


class _ConvTransposeState:
    """Causal ``MimiConvTranspose1d`` (right trim): overlap-adds the unfinished tail into the next call."""

    def __init__(self, m: nn.Module):
        conv = m.conv
        self.stride = conv.stride[0]
        self.kernel = conv.kernel_size[0]
        if not m.causal or m.padding_left != 0 or m.padding_right != self.kernel - self.stride:
            raise ValueError("streaming decode needs causal transposed convs trimmed on the right (trim_right_ratio=1)")
        if conv.dilation[0] != 1 or conv.padding[0] != 0 or conv.output_padding[0] != 0:
            raise ValueError("streaming decode supports plain transposed convs only")
        self.conv = conv
        self.tail: Tensor | None = None  # [B, C_out, kernel - stride], bias not yet added

    def __call__(self, x: Tensor) -> Tensor:  # [B, C_in, n] -> [B, C_out, n * stride]
        conv = self.conv
        # Without bias: the tail is summed into the next call and must not carry the bias twice.
        y = F.conv_transpose1d(x, conv.weight, None, self.stride, groups=conv.groups)  # [B, C_out, (n-1)*s + k]
        done = x.shape[-1] * self.stride
        if self.tail is not None:
            y[..., : self.tail.shape[-1]] += self.tail
        self.tail = y[..., done:].clone()
        y = y[..., :done]
        if conv.bias is not None:
            y = y + conv.bias[:, None]
        return y


class _TransformerState:
    """Mimi's decoder transformer, one chunk at a time, with a sliding-window KV cache.

    Reuses the layer weights; attention is recomputed here because transformers' cache
    path recomputes masks from the whole history. Query at position p sees keys in
    ``(p - sliding_window, p]``, exactly the mask of the full decode.
    """

    def __init__(self, tm: nn.Module):
        self.tm = tm
        cfg = tm.config
        self.window = int(cfg.sliding_window) if cfg.sliding_window else None
        self.pos = 0  # absolute position of the next input step
        self.k: list[Tensor | None] = [None] * len(tm.layers)  # each [B, H_kv, S, D], S <= window-1
        self.v: list[Tensor | None] = [None] * len(tm.layers)

    def __call__(self, x: Tensor) -> Tensor:  # [B, n, C] -> [B, n, C]

        b, n, _ = x.shape
        pos = torch.arange(self.pos, self.pos + n, device=x.device)
        cos, sin = self.tm.rotary_emb(x, pos[None])  # [1, n, D] each
        past = 0 if self.k[0] is None else self.k[0].shape[2]
        kv_pos = torch.arange(self.pos - past, self.pos + n, device=x.device)
        allowed = kv_pos[None, :] <= pos[:, None]  # causal, [n, past + n]
        if self.window is not None:
            allowed &= kv_pos[None, :] > pos[:, None] - self.window
        keep = past + n if self.window is None else min(past + n, self.window - 1)
        for i, layer in enumerate(self.tm.layers):
            q, k, v = _rotated_qkv(layer, x, cos, sin)
            if self.k[i] is not None:
                k = torch.cat([self.k[i], k], dim=2)  # [B, H_kv, past + n, D]
                v = torch.cat([self.v[i], v], dim=2)
            self.k[i], self.v[i] = k[:, :, -keep:], v[:, :, -keep:]
            x = _attend_and_mlp(layer, x, q, k, v, allowed)
        self.pos += n
        return x

    @property
    def cache_len(self) -> int:
        return 0 if self.k[0] is None else int(self.k[0].shape[2])


class StreamingDecoder:
    """Stateful incremental Mimi decoder: ``decode(codes[n, K]) -> audio[n * 1920]``.

    The concatenation of all outputs equals ``MimiCodec.decode`` of the concatenated codes
    (up to float rounding). Work per call depends only on ``n`` (attention looks back at
    most one sliding window). Not thread-safe; use one per stream.

    Attributes:
        frames_decoded: frames fed since the last :meth:`reset`.
        last_call_steps: transformer steps computed by the last call (``n * latent_stride``).
    """

    def __init__(self, codec: MimiCodec):
        self.codec = codec
        dec = codec.model.decoder
        if dec is None:
            raise ValueError("this Mimi has no decoder")
        self._dec = dec
        self.reset()

    def reset(self) -> None:
        """Forget all state; the next call starts a new stream."""
        from transformers.models.mimi.modeling_mimi import MimiConv1d, MimiConvTranspose1d, MimiResnetBlock

        dec = self._dec
        self._upsample = _ConvTransposeState(dec.upsample) if dec.upsample is not None else None
        self._transformer = _TransformerState(dec.decoder_transformer)
        # SEANet as a list of callables mirroring MimiDecoder.forward; resnet blocks as (block, shortcut).
        self._seanet: list[Any] = []
        for layer in dec.decoder_seanet.layers:
            if isinstance(layer, MimiConv1d):
                self._seanet.append(_ConvState(layer))
            elif isinstance(layer, MimiConvTranspose1d):
                self._seanet.append(_ConvTransposeState(layer))
            elif isinstance(layer, MimiResnetBlock):
                block = [_ConvState(m) if isinstance(m, MimiConv1d) else m for m in layer.block]
                short = _ConvState(layer.shortcut) if isinstance(layer.shortcut, MimiConv1d) else layer.shortcut
                self._seanet.append((block, short))
            else:  # activations (ELU): pointwise
                self._seanet.append(layer)
        self.frames_decoded = 0
        self.last_call_steps = 0

    @property
    def cache_len(self) -> int:
        """Past transformer positions held in the KV cache (bounded by ``sliding_window - 1``)."""
        return self._transformer.cache_len

    @torch.inference_mode()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``[n, K]`` -> the next ``n * 1920`` audio samples (1-D float)."""
        codes = self.codec._check_codes(codes)
        n = codes.shape[0]
        if n == 0:
            return torch.zeros(0, device=self.codec.device)
        x = self._run(self.codec.model.quantizer.decode(codes.transpose(0, 1)[None]), self._transformer)  # [1, 1, T]
        self.frames_decoded += n
        return x.reshape(-1)  # [n * frame_size]

    def _run(self, x: Tensor, transformer: Any) -> Tensor:
        """Latents ``[B, hidden, n]`` -> audio ``[B, 1, n * frame_size]`` through this decoder's states."""
        if self._upsample is not None:
            x = self._upsample(x)  # [B, hidden, n * latent_stride]
        steps = x.shape[-1]
        x = transformer(x.transpose(1, 2)).transpose(1, 2)  # [B, hidden, steps]
        self.last_call_steps = steps
        for layer in self._seanet:
            if isinstance(layer, tuple):
                block, short = layer
                h = x
                for m in block:
                    h = m(h)
                x = short(x) + h
            else:
                x = layer(x)
        return x

    def _conv_states(self) -> list[Any]:
        """Every convolution state, in a fixed order (the same for every decoder of one codec)."""
        out: list[Any] = [] if self._upsample is None else [self._upsample]
        for layer in self._seanet:
            if isinstance(layer, tuple):
                block, short = layer
                out += [m for m in block if isinstance(m, _ConvState)]
                out += [short] if isinstance(short, _ConvState) else []
            elif isinstance(layer, _ConvState | _ConvTransposeState):
                out.append(layer)
        return out


@torch.inference_mode()
def decode_batch(decoders: list[StreamingDecoder], codes: Tensor) -> list[Tensor]:
    """Many streams' next chunks in one call: ``codes [B, n, K]`` (row ``b`` for ``decoders[b]``).

    Each decoder's state advances exactly as if it had decoded its own row alone (the same
    operations on a batch: convolution contexts and overlap-add tails stacked, the transformer's
    sliding-window caches left-padded under a per-row mask with per-row RoPE positions), so the
    audio equals per-stream :meth:`StreamingDecoder.decode` up to float rounding. Streams may be at
    different points (different frames decoded); all rows of one call have the same ``n``.

    Returns: per decoder, its ``n * 1920`` audio samples (1-D float, on the codec's device).
    """
    if not decoders:
        return []
    codec = decoders[0].codec
    if any(d.codec is not codec for d in decoders):
        raise ValueError("decode_batch: every decoder must belong to the same codec")
    if len(decoders) == 1:
        return [decoders[0].decode(codes[0])]
    b, n = codes.shape[0], codes.shape[1]
    if b != len(decoders):
        raise ValueError(f"decode_batch: {len(decoders)} decoders but {b} rows of codes")
    codes = codec._check_codes(codes.reshape(b * n, -1)).view(b, n, -1)  # [B, n, K] on the codec's device
    if n == 0:
        return [torch.zeros(0, device=codec.device) for _ in decoders]
    batch = StreamingDecoder(codec)  # fresh states to hold the stacked ones
    rows = [d._conv_states() for d in decoders]
    stacked = batch._conv_states()
    dev = codec.device
    for j, st in enumerate(stacked):  # stack each state; a fresh stream's is the zeros its first call would use
        if isinstance(st, _ConvState):
            if st.context:
                c = st.m.conv.in_channels
                st.prev = torch.cat([r[j].prev if r[j].prev is not None else torch.zeros(1, c, st.context, device=dev)
                                     for r in rows])  # fmt: skip
        else:
            c, t = st.conv.out_channels, st.kernel - st.stride
            st.tail = torch.cat(
                [r[j].tail if r[j].tail is not None else torch.zeros(1, c, t, device=dev) for r in rows]
            )
    x = codec.model.quantizer.decode(codes.transpose(1, 2))  # [B, hidden, n]
    audio = batch._run(x, lambda h: _transformer_batch([d._transformer for d in decoders], h))  # [B, 1, T]
    for j, st in enumerate(stacked):  # hand each row's state back
        for i, r in enumerate(rows):
            if isinstance(st, _ConvState):
                if st.context:
                    r[j].prev = st.prev[i : i + 1]
            else:
                r[j].tail = st.tail[i : i + 1]
    for d in decoders:
        d.frames_decoded += n
        d.last_call_steps = batch.last_call_steps
    return [a.reshape(-1) for a in audio]


def _transformer_batch(states: list[_TransformerState], x: Tensor) -> Tensor:
    """Mimi's decoder transformer over ``x [B, n, C]``, row ``b`` continuing ``states[b]`` (its own
    position and sliding-window cache), as :class:`_TransformerState` computes one row."""

    tm, window = states[0].tm, states[0].window
    b, n, _ = x.shape
    dev = x.device
    past = [s.cache_len for s in states]
    p_max = max(past)
    start = torch.tensor([s.pos for s in states], device=dev)  # [B] next absolute position of each row
    qpos = start[:, None] + torch.arange(n, device=dev)  # [B, n]
    cos, sin = tm.rotary_emb(x, qpos)  # [B, n, D]
    # Keys: row b's cache right-aligned in p_max columns (left padding masked), then the n new ones.
    col = torch.arange(p_max + n, device=dev)
    kv_pos = start[:, None] - p_max + col  # [B, P+n]: absolute position of each key column
    valid = col[None, :] >= p_max - torch.tensor(past, device=dev)[:, None]  # [B, P+n]
    allowed = valid[:, None, :] & (kv_pos[:, None, :] <= qpos[:, :, None])  # [B, n, P+n]
    if window is not None:
        allowed &= kv_pos[:, None, :] > qpos[:, :, None] - window
    mask = allowed[:, None]  # [B, 1, n, P+n]
    for i, layer in enumerate(tm.layers):
        q, k, v = _rotated_qkv(layer, x, cos, sin)
        if p_max:
            hk, d = k.shape[1], k.shape[3]
            pk = [s.k[i] if s.k[i] is not None else k.new_zeros(1, hk, 0, d) for s in states]
            pv = [s.v[i] if s.v[i] is not None else v.new_zeros(1, hk, 0, d) for s in states]
            pad = [k.new_zeros(1, hk, p_max - t.shape[2], d) for t in pk]
            k = torch.cat([torch.cat([torch.cat([z, t], dim=2) for z, t in zip(pad, pk, strict=True)]), k], dim=2)
            v = torch.cat([torch.cat([torch.cat([z, t], dim=2) for z, t in zip(pad, pv, strict=True)]), v], dim=2)
        for r, s in enumerate(states):  # each row keeps its own last window-1 keys/values
            have = past[r] + n
            keep = have if window is None else min(have, window - 1)
            s.k[i], s.v[i] = k[r : r + 1, :, -keep:], v[r : r + 1, :, -keep:]
        x = _attend_and_mlp(layer, x, q, k, v, mask)
    for s in states:
        s.pos += n
    return x


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
