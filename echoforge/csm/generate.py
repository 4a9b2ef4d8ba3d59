"""Tensor functions for CSM inference: prefill a slot, sample a frame, step the backbone.

Every sequence owns one KV-cache *slot* (a batch row of the caches) for its whole life and
starts at column 0, so a row's cache column is also its RoPE position; rows at different
lengths decode together with one column per row (``pos [B]``). ``runner.py`` calls these;
``scheduler.py`` decides who runs when.

One frame step, :func:`frame_step`, for both execution modes:

* eager (CPU/MPS, CUDA without compile): ``kv_len`` = the live length known on the host, so the
  caches are sliced to it, and host hints (all rows greedy -> argmax) take fast paths;
* static (``kv_len=None``, for ``torch.compile(mode="reduce-overhead")`` / CUDA graphs): full
  window under a mask, no ``.item()``, no branch on data; sampling settings and RNG are per-row
  tensors, so one captured graph per batch-size bucket serves every request mix.

Sampling randomness is counter-based (:func:`exponential_noise`): a pure function of the row's
seed, its frame counter and the codebook, built from integer tensor ops. A seeded row thus
gives the same audio whatever its neighbours in the batch, on any device, and the whole
sampled frame is capturable by a CUDA graph (no ``torch.Generator`` state to thread through).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask

from echoforge.csm.model import CSM

# The compiled path's fixed top-k bound (a static shape); requests ask for k <= this.
KMAX = 256

_M32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # < 2^27: x * _MIX stays below 2^59, so int64 never overflows (same on every device)
_GOLDEN = 0x9E3779B1


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) on int64 tensors holding [0, 2^32)."""
    x = ((x ^ (x >> 16)) * _MIX) & _M32
    x = ((x ^ (x >> 16)) * _MIX) & _M32
    return x ^ (x >> 16)


def seed_key(seed: int) -> int:
    """Fold any Python int seed to the 32-bit key :func:`exponential_noise` takes."""
    s = seed & 0xFFFFFFFFFFFFFFFF
    return ((s ^ (s >> 32)) * 0x9E3779B97F4A7C15 >> 32) & _M32


def exponential_noise(key: Tensor, counter: Tensor, codebooks: int, n: int) -> Tensor:
    """``[B, codebooks, n]`` Exp(1) draws for one frame that depend only on (key, counter, codebook, column).

    Drawn once per frame for all codebooks (one vectorised hash instead of an RNG call per
    codebook); column ``j`` does not depend on ``n``, so any top-k bound sees the same draws.

    Args:
        key: ``[B]`` int64 row keys in [0, 2^32) (see :func:`seed_key`).
        counter: ``[B]`` int64 frame index of each row.
        codebooks: how many codebooks the frame has.
        n: candidates per codebook (the top-k bound).
    """
    cb = torch.arange(codebooks, device=key.device, dtype=torch.long)
    base = _mix32(key[:, None] ^ _mix32((counter[:, None] * 64 + cb[None, :]) & _M32))  # [B, K]
    cols = torch.arange(n, device=key.device, dtype=torch.long) * _GOLDEN
    x = _mix32((base[:, :, None] + cols) & _M32)  # [B, K, n]
    u = ((x >> 8).float() + 0.5) * (1.0 / 16_777_216)  # 24 random bits -> (0, 1)
    return -torch.log(u)


@dataclass
class Sampler:
    """Per-row sampling settings for one frame (all tensors ``[B]`` on the model's device).

    ``kmax`` bounds every row's top-k; ``greedy`` (every row has temperature 0) and
    ``any_greedy`` are host-side hints for the eager path; the static path ignores them.
    """

    temperature: Tensor  # float; 0 = argmax for that row
    topk: Tensor  # long, each <= kmax
    key: Tensor  # long, per-row RNG key
    counter: Tensor  # long, per-row frame index
    kmax: int = KMAX
    greedy: bool = False
    any_greedy: bool = True

    def frame_noise(self, codebooks: int, vocab: int) -> Tensor | None:
        """``[B, codebooks, k]`` draws for this frame (None when every row is greedy)."""
        return None if self.greedy else exponential_noise(self.key, self.counter, codebooks, min(self.kmax, vocab))

    def __call__(self, logits: Tensor, noise: Tensor | None) -> Tensor:
        """One codebook: ``logits [B, V]`` with that codebook's ``noise [B, k]`` -> ``[B]``."""
        if noise is None:
            return logits.argmax(-1)
        return sample(logits, self.temperature, self.topk, noise, self.any_greedy)


def sample(logits: Tensor, temperature: Tensor, topk: Tensor, noise: Tensor, any_greedy: bool = True) -> Tensor:
    """Top-k sampling with per-row temperature and k; rows with temperature 0 take the argmax.

    Args:
        logits: ``[B, V]``.
        temperature: ``[B]``; topk: ``[B]`` (each <= ``noise.shape[-1]``, the static top-k bound).
        noise: ``[B, k]`` Exp(1) draws (see :func:`exponential_noise`).

    Returns:
        ``[B]`` long token ids.
    """
    logits = logits.float()
    k = noise.shape[-1]
    vals, idx = (logits / temperature.clamp_min(1e-5)[:, None]).topk(k, dim=-1)  # [B, k]
    keep = torch.arange(k, device=vals.device)[None, :] < topk[:, None]
    probs = torch.softmax(vals.masked_fill(~keep, float("-inf")), dim=-1)
    # argmax(p / q) with q ~ Exp(1) is an exact draw from p with no host sync (gpt-fast's trick).
    sampled = idx.gather(-1, (probs / noise).argmax(-1, keepdim=True)).squeeze(-1)
    if not any_greedy:
        return sampled
    return torch.where(temperature > 0, sampled, logits.argmax(-1))


def prefill(model: CSM, tokens: Tensor, tokens_mask: Tensor, start: int, slot: int) -> Tensor:
    """Write prompt rows ``tokens [1, T, K+1]`` into slot ``slot`` at columns ``start..start+T-1``.

    Long prompts are fed in chunks (the scheduler interleaves them with other rows' frames);
    ``start`` is how much of this slot is already filled. Returns the last position's
    backbone state ``[1, D]``.
    """
    t = tokens.shape[1]
    dev = tokens.device
    input_pos = torch.arange(start, start + t, device=dev)
    mask = None  # a block starting at column 0 is plain causal attention
    if start:
        cols = torch.arange(start + t, device=dev)
        mask = (cols[None, :] <= input_pos[:, None])[None, None]  # [1, 1, T, start+T]
    h = model.backbone(model.embed_tokens(tokens, tokens_mask), input_pos, mask, start + t, slot)
    return h[:, -1]


def sample_codebooks(model: CSM, h: Tensor, sampler: Sampler, slice_kv: bool = True) -> Tensor:
    """Pick all K codes of one frame from the backbone state ``h`` ``[B, D]`` -> ``[B, K]``.

    Codebook 0 comes from ``codebook0_head``; codebooks 1..K-1 from the depth decoder, whose
    cache is simply overwritten from position 0 each frame (the causal mask hides old columns),
    so nothing is reallocated or cleared.
    """
    if not slice_kv:  # static shapes: the three-graph form (codebook_head, codebook_step, ...)
        return static_codebooks(model, h, sampler)
    k = model.args.audio_num_codebooks
    noise = sampler.frame_noise(k, model.args.audio_vocab_size)  # [B, K, k]: the whole frame's draws at once
    c0 = sampler(model.codebook0_head(h), None if noise is None else noise[:, 0])  # [B]
    codes = [c0]
    # Positions 0 and 1: the projected backbone state and codebook 0's embedding.
    x = torch.cat([model.projection(h).unsqueeze(1), model.embed_code(0, c0)], dim=1)  # [B, 2, dec_dim]
    positions = model.decoder_positions  # [K] = arange(K); slices of it are static per step
    pos = positions[:2]
    for i in range(1, k):
        # Decoder positions are the same for every row; attend over exactly the live prefix, no mask needed.
        out = model.decoder(x, pos, None, i + 1)
        ci = sampler(out[:, -1] @ model.audio_head[i - 1], None if noise is None else noise[:, i])  # [B, vocab] -> [B]
        codes.append(ci)
        x = model.embed_code(i, ci)
        pos = positions[i + 1 : i + 2]
    return torch.stack(codes, dim=1)


# ---------------------------------------------------------------------- the static frame in three graphs
# The static (compiled / CUDA-graphed) frame is three functions: codebook_head (codebooks 0 and 1),
# codebook_step (one depth-decoder position, the same graph for codebooks 2..K-1: the codebook is a
# tensor) and backbone_step. frame_step runs them in a row (compiled whole: one graph per frame);
# the runner may compile each on its own instead (ModelRunner(graphs="codebook")): the codebook-step
# graph is then traced once and replayed K-2 times per frame, about a sixth of the ops to compile.


def codebook_head(model: CSM, h: Tensor, sampler: Sampler) -> tuple[Tensor, Tensor, Tensor]:
    """Codebooks 0 and 1 of a static frame from the backbone state ``h [B, D]``.

    Returns ``(codes [B, 2], x [B, 1, dec_dim]`` (the decoder input of codebook 2), ``noise [B, K, k])``.
    """
    k, b = model.args.audio_num_codebooks, h.shape[0]
    noise = exponential_noise(sampler.key, sampler.counter, k, min(sampler.kmax, model.args.audio_vocab_size))
    c0 = sampler(model.codebook0_head(h), noise[:, 0])
    x = torch.cat([model.projection(h).unsqueeze(1), model.embed_code(0, c0)], dim=1)  # [B, 2, dec_dim]
    pos = model.decoder_positions[:2]
    out = model.decoder(x, pos, model.decoder_causal[pos][None, None].expand(b, 1, -1, -1), None)
    c1 = sampler(out[:, -1] @ model.audio_head[0], noise[:, 1])
    return torch.stack([c0, c1], dim=1), model.embed_code(1, c1), noise


def codebook_step(model: CSM, x: Tensor, i: Tensor, sampler: Sampler, noise: Tensor) -> tuple[Tensor, Tensor]:
    """Codebook ``i`` (a 1-element long tensor, 2..K-1) of a static frame from its decoder input ``x``.

    One decoder position (column ``i`` of the decoder cache, under the causal mask); the codebook is
    data, so one graph serves every ``i``. Returns ``(codes [B], x [B, 1, dec_dim]`` for codebook ``i+1)``.
    """
    b = x.shape[0]
    out = model.decoder(x, i, model.decoder_causal[i][None, None].expand(b, 1, -1, -1), None)
    head = model.audio_head.index_select(0, i - 1)[0]  # [dec_dim, vocab]
    ci = sampler(out[:, -1] @ head, noise.index_select(1, i)[:, 0])
    return ci, model.embed_code(i, ci)


def backbone_step(model: CSM, frame: Tensor, pos: Tensor, mask_mod: Callable | None = None) -> Tensor:
    """Feed a frame ``[B, K]`` back through the backbone (full window; static shapes) -> ``h [B, D]``."""
    x = model.embed_frame(frame)
    s = model.backbone.args.max_seq_len
    if mask_mod is not None:
        return model.backbone(x, pos[:, None], length_block_mask(pos, s, mask_mod), None)[:, -1]
    mask = (torch.arange(s, device=frame.device)[None, :] <= pos[:, None])[:, None, None, :]  # [B, 1, 1, S]
    return model.backbone(x, pos[:, None], mask, None)[:, -1]


def static_codebooks(model: CSM, h: Tensor, sampler: Sampler) -> Tensor:
    """All K codes of a static frame ``[B, K]``: :func:`codebook_head`, then :func:`codebook_step` for 2..K-1."""
    codes, x, noise = codebook_head(model, h, sampler)
    cols = [codes]
    positions = model.decoder_positions
    for i in range(2, model.args.audio_num_codebooks):
        ci, x = codebook_step(model, x, positions[i : i + 1], sampler, noise)
        cols.append(ci[:, None])
    return torch.cat(cols, dim=1)


def static_frame(model: CSM, h: Tensor, pos: Tensor, sampler: Sampler, mask_mod: Callable | None = None
                 ) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One static frame: the codes (:func:`sample_codebooks`, static), then :func:`backbone_step`."""
    frame = sample_codebooks(model, h, sampler, slice_kv=False)
    return frame, backbone_step(model, frame, pos, mask_mod)


# KV block of the length-aware attention (FlexAttention's default block size).
FLEX_BLOCK = 128


def length_mask_mod(pos: Tensor) -> Callable:
    """FlexAttention ``mask_mod`` of decode rows: row ``b`` sees KV columns ``0..pos[b]``.

    ``pos`` is the runner's persistent per-slot position tensor (updated in place), so one function
    serves every step: a compiled step is traced once and reads the current positions.
    """

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return kv_idx <= pos[b]

    return mask_mod


def length_block_mask(pos: Tensor, window: int, mask_mod: Callable) -> BlockMask:
    """A block mask ``[B, 1, 1, window]`` from per-row lengths ``pos + 1``: row ``b`` visits only its
    ``pos[b] // FLEX_BLOCK + 1`` KV blocks, so attention costs each row's real length, not the window.

    Pure tensor ops on ``pos`` (no host sync): built inside the compiled / captured step.
    """
    b, nb = pos.shape[0], -(-window // FLEX_BLOCK)
    kv_num = (pos // FLEX_BLOCK + 1).to(torch.int32).view(b, 1, 1)
    kv_idx = torch.arange(nb, device=pos.device, dtype=torch.int32).view(1, 1, 1, nb).expand(b, 1, 1, nb).contiguous()
    return BlockMask.from_kv_blocks(kv_num, kv_idx, BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod, seq_lengths=(1, window))


def frame_step(model: CSM, h: Tensor, pos: Tensor, sampler: Sampler, kv_len: int | None = None,
               same_pos: bool = False, mask_mod: Callable | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One frame for slots ``0..B-1``: sample ``[B, K]`` from ``h``, then feed it back through the backbone.

    Args:
        h: ``[B, D]`` backbone states; pos: ``[B]`` cache column of each row's new frame.
        sampler: per-row settings (static mode: ``greedy=False, any_greedy=True, kmax=KMAX``, so
            nothing recompiles).
        kv_len: eager mode: ``max(pos) + 1`` (known on the host: no sync), caches sliced to it.
            None: static shapes (the compiled / CUDA-graph path), the full window under a mask.
        same_pos: eager hint: every row is at the same column (no mask, one RoPE lookup).
        mask_mod: static path: :func:`length_mask_mod` of the runner's positions: the backbone attends
            through FlexAttention over each row's own KV blocks (the fused kernel on CUDA) instead
            of SDPA over the whole window under a mask.

    Returns:
        ``(frame [B, K], h_next [B, D])``.
    """
    if kv_len is None:  # static shapes: the compiled / CUDA-graph path
        return static_frame(model, h, pos, sampler, mask_mod)
    frame = sample_codebooks(model, h, sampler, slice_kv=True)
    x = model.embed_frame(frame)
    if same_pos:
        return frame, model.backbone(x, pos[:1], None, kv_len)[:, -1]
    mask = (torch.arange(kv_len, device=h.device)[None, :] <= pos[:, None])[:, None, None, :]  # [B, 1, 1, S]
    return frame, model.backbone(x, pos[:, None], mask, kv_len)[:, -1]
