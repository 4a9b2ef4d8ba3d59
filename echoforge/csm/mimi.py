"""Mimi codec (24 kHz <-> 12.5 Hz x 32 codebooks) with a truly streaming decoder.

:class:`MimiCodec` wraps transformers' ``MimiModel`` (always fp32) for whole-clip
``encode``/``decode``. transformers can stream only Mimi's *encoder* (a conv padding
cache), so :class:`StreamingDecoder` keeps its own state for every part of the decoder:

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
codes up to float rounding.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from echoforge.csm.hub import resolve
from echoforge.csm.rates import FRAME_RATE, FRAME_SIZE, SAMPLE_RATE  # noqa: F401 - importable from here too

log = logging.getLogger("echoforge.csm")


# transformers saves Mimi (alone or as CSM's ``codec_model``) in the original flat layout and
# renames it while loading; a state dict read straight from safetensors needs the same renames.
_FLAT_TO_NESTED = (
    ("encoder.layers.", "encoder.encoder_seanet.layers."),
    ("encoder_transformer.", "encoder.encoder_transformer."),
    ("downsample.", "encoder.downsample."),
    ("upsample.", "decoder.upsample."),
    ("decoder_transformer.", "decoder.decoder_transformer."),
    ("decoder.layers.", "decoder.decoder_seanet.layers."),
)


def nest_mimi_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map a flat-layout Mimi state dict (``decoder.layers.*``, ``upsample.*`` ...) to ``MimiModel``'s names.

    Keys already in ``MimiModel``'s layout (``decoder.decoder_seanet.*``) pass through unchanged.
    """
    out = {}
    for key, value in state.items():
        for old, new in _FLAT_TO_NESTED:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


class MimiCodec:
    """Mimi encode/decode at 24 kHz; codes are ``LongTensor[frames, num_codebooks]``.

    Args:
        model: a transformers ``MimiModel``; it is put in eval mode and kept fp32.
    """

    def __init__(self, model: nn.Module):
        self.model = model.float().eval()
        cfg = model.config
        self.config = cfg
        self.sample_rate = int(cfg.sampling_rate)
        self.frame_rate = float(cfg.frame_rate)
        self.frame_size = int(round(self.sample_rate / self.frame_rate))
        self.num_codebooks = int(cfg.num_quantizers)
        self.codebook_size = int(cfg.codebook_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, device: str | torch.device = "cpu") -> MimiCodec:
        """Load Mimi from a local directory or a hub repo id.

        Accepts a Mimi checkpoint (``config.json`` with ``model_type: mimi``, e.g. ``kyutai/mimi``)
        or a transformers CSM checkpoint whose ``config.json`` carries ``codec_config`` and whose
        safetensors hold the codec under ``codec_model.*``.

        Raises:
            FileNotFoundError: the directory has no ``config.json``.
            ValueError: the config is neither Mimi nor CSM-with-codec, or weights are missing.
        """
        path = Path(path_or_repo_id)
        if not path.is_dir():
            path = _download(str(path_or_repo_id))
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{cfg_file}: not found; a Mimi or CSM checkpoint directory needs config.json")
        cfg = json.loads(cfg_file.read_text())
        kind = cfg.get("model_type")
        if kind == "mimi":
            from transformers import MimiModel

            model = MimiModel.from_pretrained(str(path))
            return cls(model.float().eval().to(device))
        if kind == "csm":
            if not cfg.get("codec_config"):
                raise ValueError(
                    f"{cfg_file}: CSM config has no codec_config; pass a Mimi checkpoint (e.g. kyutai/mimi)"
                )
            state = _read_safetensors(path, prefix="codec_model.")
            if not state:
                raise ValueError(f"{path}: no codec_model.* weights in the safetensors; pass a Mimi checkpoint instead")
            return cls.from_state_dict(cfg["codec_config"], state, device=device)
        raise ValueError(f"{cfg_file}: model_type {kind!r} is not 'mimi' or 'csm'")

    @classmethod
    def from_state_dict(
        cls, config: dict[str, Any] | Any, state: dict[str, Tensor], device: str | torch.device = "cpu"
    ) -> MimiCodec:
        """Build from a Mimi config (dict or ``MimiConfig``) and a state dict in either layout.

        Raises:
            ValueError: weights missing or unexpected for this config.
        """
        from transformers import MimiConfig, MimiModel

        if isinstance(config, dict):
            config = dict(config)
            config.pop("model_type", None)
            config.pop("transformers_version", None)
            config = MimiConfig(**config)
        model = MimiModel(config)
        missing, unexpected = model.load_state_dict(nest_mimi_state(state), strict=False)
        # Non-persistent buffers (RoPE inv_freq, conv strides) are not saved; everything else must match.
        missing = [k for k in missing if not k.endswith(("inv_freq", "_embed"))]
        if missing or unexpected:
            raise ValueError(f"Mimi weights do not fit the config: missing {missing[:3]}, unexpected {unexpected[:3]}")
        return cls(model.float().eval().to(device))

    # ------------------------------------------------------------------ whole-clip API
    @torch.inference_mode()
    def encode(self, audio: Tensor) -> Tensor:
        """1-D float audio at 24 kHz ``[T]`` -> codes ``LongTensor[ceil(T / 1920), num_codebooks]``."""
        audio = torch.as_tensor(audio)
        if audio.ndim != 1:
            raise ValueError(f"encode expects 1-D audio [T], got shape {tuple(audio.shape)}")
        if audio.numel() == 0:
            return torch.zeros(0, self.num_codebooks, dtype=torch.long)
        x = audio.to(self.device, torch.float32)[None, None]  # [B=1, C=1, T]
        codes = self.model.encode(x, num_quantizers=self.num_codebooks).audio_codes  # [1, K, F]
        return codes[0].transpose(0, 1).long()  # [F, K]

    @torch.inference_mode()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``[frames, K]`` -> 1-D float audio ``[frames * 1920]`` at 24 kHz."""
        codes = self._check_codes(codes)
        if codes.shape[0] == 0:
            return torch.zeros(0, device=self.device)
        audio = self.model.decode(codes.transpose(0, 1)[None]).audio_values  # [1, 1, T]
        return audio.reshape(-1)

    def streaming_decoder(self) -> StreamingDecoder:
        """A fresh stateful decoder: feed codes chunk by chunk, get audio chunk by chunk."""
        return StreamingDecoder(self)

    def _check_codes(self, codes: Tensor) -> Tensor:
        codes = torch.as_tensor(codes)
        if codes.ndim != 2 or not 1 <= codes.shape[1] <= self.num_codebooks:
            raise ValueError(f"codes must be [frames, K<= {self.num_codebooks}], got shape {tuple(codes.shape)}")
        if codes.is_floating_point():
            raise ValueError("codes must be integer")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes must lie in 0..{self.codebook_size - 1} (got {int(codes.min())}..{int(codes.max())})"
            )
        return codes.to(self.device, torch.long)


# ---------------------------------------------------------------------- streaming state
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
        from transformers.models.mimi.modeling_mimi import apply_rotary_pos_emb

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
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)  # [B, H, n, D]
            k = attn.k_proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)  # [B, H_kv, n, D]
            v = attn.v_proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            if self.k[i] is not None:
                k = torch.cat([self.k[i], k], dim=2)  # [B, H_kv, past + n, D]
                v = torch.cat([self.v[i], v], dim=2)
            self.k[i], self.v[i] = k[:, :, -keep:], v[:, :, -keep:]
            rep = attn.num_key_value_groups
            if rep > 1:
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=attn.scaling)  # [B, H, n, D]
            o = attn.o_proj(o.transpose(1, 2).reshape(b, n, -1))
            x = x + layer.self_attn_layer_scale(o)
            x = x + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(x)))
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
    from transformers.models.mimi.modeling_mimi import apply_rotary_pos_emb

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
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)  # [B, H, n, D]
        k = attn.k_proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)  # [B, H_kv, n, D]
        v = attn.v_proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
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
        rep = attn.num_key_value_groups
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling)  # [B, H, n, D]
        o = attn.o_proj(o.transpose(1, 2).reshape(b, n, -1))
        x = x + layer.self_attn_layer_scale(o)
        x = x + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(x)))
    for s in states:
        s.pos += n
    return x


# ---------------------------------------------------------------------- batching across streams
class MimiBatcher:
    """One thread decodes the chunks of every stream of one codec: whatever is queued when it wakes,
    grouped by chunk length, one :func:`decode_batch` call per group (on CUDA on a side stream of
    its own, so decoding overlaps the frame graphs; one device->host copy per call).

    Streams use :meth:`decoder` (one per stream): its ``decode(codes)`` blocks until the chunk is
    decoded and returns CPU float audio. A stream has at most one chunk in flight (its next chunk
    depends on the state this one leaves).

    ``stats``: ``chunks`` decoded, ``calls`` made, ``max_rows`` in one call.
    """

    def __init__(self, codec: MimiCodec):
        import threading

        self.codec = codec
        self._queue: list[tuple[BatchedStream, Tensor, Any]] = []
        self._cv = threading.Condition()
        self._hold = threading.Lock()  # held while a round is drained and decoded (tests hold it to queue rows)
        self._thread: Any = None
        self._closed = False
        self.stats = {"chunks": 0, "calls": 0, "max_rows": 0}

    def decoder(self) -> BatchedStream:
        """A stream's decoder whose chunks go through this batcher."""
        return BatchedStream(self, self.codec.streaming_decoder())

    def submit(self, stream: BatchedStream, codes: Tensor) -> Any:
        """Queue ``codes [n, K]`` of ``stream``; a ``Future`` of its audio (1-D float, CPU)."""
        import threading
        from concurrent.futures import Future

        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the Mimi batcher is closed")
            self._queue.append((stream, codes, fut))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="echoforge-mimi-batch", daemon=True)
                self._thread.start()
            self._cv.notify()
        return fut

    def paused(self) -> Any:
        """A context in which nothing is decoded: chunks queued inside it go out together after it."""
        return self._hold

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        import contextlib

        side = torch.cuda.Stream(self.codec.device) if self.codec.device.type == "cuda" else None
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
            with self._hold, torch.inference_mode(), torch.cuda.stream(side) if side else contextlib.nullcontext():
                with self._cv:
                    items, self._queue = self._queue, []
                seen: set[int] = set()
                now, later = [], []
                for it in items:  # one chunk per stream per round: its next one needs this one's state
                    (later if id(it[0]) in seen else now).append(it)
                    seen.add(id(it[0]))
                if later:
                    with self._cv:
                        self._queue[:0] = later
                groups: dict[int, list] = {}
                for it in now:
                    groups.setdefault(int(it[1].shape[0]), []).append(it)
                for group in groups.values():
                    self._decode(group)

    def _decode(self, group: list[tuple[BatchedStream, Tensor, Any]]) -> None:
        try:
            codes = torch.stack([c for _, c, _ in group])
            audio = decode_batch([s.dec for s, _, _ in group], codes)
            host = torch.stack(audio).float().cpu() if audio else torch.zeros(0)  # one copy (and sync) per call
        except BaseException as exc:  # every stream of the call gets the error
            for _, _, fut in group:
                fut.set_exception(exc)
            return
        self.stats["chunks"] += len(group)
        self.stats["calls"] += 1
        self.stats["max_rows"] = max(self.stats["max_rows"], len(group))
        for i, (_, _, fut) in enumerate(group):
            fut.set_result(host[i])


class BatchedStream:
    """One stream's decoder through a :class:`MimiBatcher` (the same ``decode`` as :class:`StreamingDecoder`)."""

    def __init__(self, batcher: MimiBatcher, dec: StreamingDecoder):
        self.batcher, self.dec = batcher, dec

    @property
    def frames_decoded(self) -> int:
        return self.dec.frames_decoded

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``[n, K]`` -> the next ``n * 1920`` audio samples (1-D float, CPU), decoded with every
        other stream's chunk that is waiting."""
        if codes.shape[0] == 0:
            return torch.zeros(0)
        return self.batcher.submit(self, codes).result()

    def close(self) -> None:
        """Nothing to free (the state is this object's); kept for symmetry with stream lifetimes."""


# ---------------------------------------------------------------------- file helpers
def _download(repo_id: str) -> Path:
    """Fetch config + safetensors of a hub repo (or find them in the local HF cache)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(repo_id, allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json"])
        )
    except Exception as exc:
        raise FileNotFoundError(
            f"Mimi codec {repo_id!r}: not a local directory and could not be fetched from the hub ({exc}); "
            "download it (e.g. `huggingface-cli download kyutai/mimi`) or pass a local path"
        ) from exc


def _read_safetensors(path: Path, prefix: str) -> dict[str, Tensor]:
    """All tensors under ``prefix`` (prefix stripped) from ``model.safetensors`` or its shards."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [p.name for p in path.glob("*.safetensors")]
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights found")
    out: dict[str, Tensor] = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    out[key[len(prefix) :]] = f.get_tensor(key)
    return out


def frames_for_samples(num_samples: int) -> int:
    """Code frames Mimi produces for ``num_samples`` of 24 kHz audio."""
    return math.ceil(num_samples / FRAME_SIZE)


def load_codec(model_dir: str | Path, device: str = "cpu") -> Any:
    """Mimi from a Mimi checkpoint or bundled in a transformers-format CSM directory, else ``kyutai/mimi``."""
    d = resolve(model_dir)
    d = d if d.is_dir() else d.parent
    cfg_path = d / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    if cfg.get("model_type") == "mimi" or cfg.get("codec_config"):
        return MimiCodec.from_pretrained(d, device=device)
    return MimiCodec.from_pretrained("kyutai/mimi", device=device)
