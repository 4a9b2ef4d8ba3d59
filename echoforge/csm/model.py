"""The CSM network in one file: a Llama-3.2 backbone plus a small Llama depth decoder.

Each audio frame (80 ms of Mimi codes, 32 codebooks) costs one backbone step, which predicts
codebook 0 from the conversation so far, plus 31 depth-decoder steps, which predict codebooks
1..31 from the backbone's last hidden state and the codes already chosen in this frame.

Shapes are static (gpt-fast style): KV caches are preallocated by :meth:`CSM.setup_caches`
and written by index, so the per-frame step can be compiled / CUDA-graphed. Nothing here
knows about tokenizers, files or sampling; see ``generate.py`` and ``generator.py``.

Weight names follow gpt-fast (fused ``wqkv``, ``w1``/``w3``/``w2``); ``loader.py`` maps the
transformers and original Sesame checkpoints onto them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, flex_attention
from torch.utils.checkpoint import checkpoint

# Llama-3 RoPE frequency scaling as used by Llama-3.2 (and thus by both CSM transformers).
LLAMA3_ROPE_SCALING = {
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@dataclass
class ModelArgs:
    """One Llama-style transformer (no embeddings, no head)."""

    n_layer: int = 16
    n_head: int = 32
    n_local_heads: int = -1  # KV heads (grouped-query attention); -1 means n_head
    dim: int = 2048
    intermediate_size: int = 8192
    head_dim: int = -1  # -1 means dim // n_head
    rope_base: float = 500_000.0
    rope_scaling: dict | None = field(default_factory=lambda: dict(LLAMA3_ROPE_SCALING))
    norm_eps: float = 1e-5
    max_seq_len: int = 2048

    def __post_init__(self) -> None:
        if self.n_local_heads == -1:
            self.n_local_heads = self.n_head
        if self.head_dim == -1:
            self.head_dim = self.dim // self.n_head
        assert self.n_head % self.n_local_heads == 0, "n_head must be a multiple of n_local_heads"


# The two Llama-3.2 flavours Sesame trained CSM with (names as in the reference `FLAVORS`).
transformer_configs: dict[str, dict] = {
    "llama-1B": dict(n_layer=16, n_head=32, n_local_heads=8, dim=2048, intermediate_size=8192, max_seq_len=2048),
    "llama-100M": dict(n_layer=4, n_head=8, n_local_heads=2, dim=1024, intermediate_size=8192, max_seq_len=2048),
}


@dataclass
class CSMArgs:
    """Backbone + depth decoder + vocabularies."""

    backbone: ModelArgs = field(default_factory=ModelArgs)
    decoder: ModelArgs = field(default_factory=lambda: ModelArgs(**transformer_configs["llama-100M"]))
    text_vocab_size: int = 128_256
    audio_vocab_size: int = 2051  # 2048 Mimi codes + 3 specials (never decodable)
    audio_num_codebooks: int = 32

    def __post_init__(self) -> None:
        # The decoder only ever sees positions 0..num_codebooks-1 within one frame
        # (backbone state, then codebooks 0..30), so its cache is that long and no longer.
        self.decoder.max_seq_len = self.audio_num_codebooks

    @classmethod
    def from_name(cls, name: str) -> CSMArgs:
        """A named preset, e.g. ``CSMArgs.from_name("csm-1b")``."""
        if name not in csm_configs:
            raise ValueError(f"unknown CSM preset {name!r}; choose one of {sorted(csm_configs)}")
        backbone, decoder = csm_configs[name]
        return cls(
            backbone=ModelArgs(**transformer_configs[backbone]), decoder=ModelArgs(**transformer_configs[decoder])
        )


csm_configs: dict[str, tuple[str, str]] = {"csm-1b": ("llama-1B", "llama-100M")}


class KVCache(nn.Module):
    """Preallocated keys/values ``[B, H_kv, S, head_dim]`` written by position index.

    Each batch row is a *slot* owned by one sequence (``sequence.Sequence``) for its whole life: a
    slot's sequence starts at column 0, so a row's cache column is also its RoPE position.
    """

    def __init__(self, max_batch_size: int, max_seq_len: int, n_heads: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        shape = (max_batch_size, n_heads, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("rows", torch.arange(max_batch_size), persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor, slot: int = 0) -> tuple[Tensor, Tensor]:
        """Write ``k, v`` ``[B, H_kv, T, hd]`` into slots ``slot .. slot+B-1``; return those slots' caches.

        ``input_pos`` is either ``[T]`` (the same columns for every row: prefill of one slot)
        or ``[B, 1]`` (one column per row: batched decode of slots ``0..B-1`` at different lengths).
        Slots are stable: a sequence keeps its slot from admission to the end, nothing is moved.
        """
        b = k.shape[0]
        kc, vc = self.k_cache, self.v_cache
        if slot != 0 or b != kc.shape[0]:
            kc, vc = kc[slot : slot + b], vc[slot : slot + b]
        if input_pos.ndim == 1:
            kc.index_copy_(2, input_pos, k)
            vc.index_copy_(2, input_pos, v)
        else:  # per-row column: kc[r, :, pos[r]] = k[r, :, 0]
            rows, cols = self.rows[:b], input_pos[:, 0]
            kc[rows, :, cols] = k[:, :, 0]
            vc[rows, :, cols] = v[:, :, 0]
        return kc, vc

    def reset(self) -> None:
        """Zero in place (no reallocation). Not needed for correctness: masks hide stale columns."""
        self.k_cache.zero_()
        self.v_cache.zero_()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps, self.shape = eps, (dim,)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:  # one fused op: per-op overhead dominates small CPU models
            return F.rms_norm(x, self.shape, self.weight, self.eps)
        # Normalise in fp32 (bf16 variance is too coarse), then scale in the input dtype.
        return self.weight * F.rms_norm(x.float(), self.shape, eps=self.eps).to(x.dtype)


def rope_inv_freq(args: ModelArgs) -> Tensor:
    """Inverse RoPE frequencies ``[head_dim // 2]``, with Llama-3 long-context scaling if configured."""
    d = args.head_dim
    inv_freq = 1.0 / (args.rope_base ** (torch.arange(0, d, 2, dtype=torch.float) / d))
    sc = args.rope_scaling
    if not sc:
        return inv_freq
    factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
    old_len = sc["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are slowed down by `factor`, short ones kept, the band between interpolated.
    scaled = torch.where(wavelen > old_len / lo, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
    return torch.where(medium, smoothed, scaled)


def rope_tables(args: ModelArgs) -> tuple[Tensor, Tensor]:
    """cos and *signed* sin tables ``[max_seq_len, head_dim]`` in fp32 (half-split layout).

    The usual ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = [-x2, x1]`` equals
    ``x * cos + roll(x, hd/2) * [-sin, sin]``: one roll instead of chunk + neg + cat.
    """
    t = torch.arange(args.max_seq_len, dtype=torch.float)
    freqs = t[:, None] * rope_inv_freq(args)[None, :]  # [S, head_dim/2]
    return torch.cat([freqs, freqs], dim=-1).cos(), torch.cat([-freqs.sin(), freqs.sin()], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x [..., hd]`` by tables from :func:`rope_tables` (broadcastable to ``x``)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        q_dim, kv_dim = args.n_head * args.head_dim, args.n_local_heads * args.head_dim
        # One fused matmul for q, k, v: fewer kernel launches / better CPU GEMM utilisation.
        self.wqkv = nn.Linear(args.dim, q_dim + 2 * kv_dim, bias=False)
        self.wo = nn.Linear(q_dim, args.dim, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, input_pos: Tensor, kv_len: int | None,
        slot: int = 0,
    ) -> Tensor:
        a = self.args
        bsz, seqlen, _ = x.shape
        qkv = F.linear(x, self.wqkv.weight).view(bsz, seqlen, a.n_head + 2 * a.n_local_heads, a.head_dim)
        # Views only, as few ops as possible (each is dispatched per layer per codebook step):
        qk, v = qkv.split([a.n_head + a.n_local_heads, a.n_local_heads], dim=2)
        qk = apply_rope(qk, cos, sin).transpose(1, 2)  # q and k rotated in one go: [B, H + H_kv, T, hd]
        q, k = qk.split([a.n_head, a.n_local_heads], dim=1)  # [B, H, T, hd], [B, H_kv, T, hd]
        v = v.transpose(1, 2)
        if self.kv_cache is not None:  # inference: keys/values go to the slot's cache columns
            k, v = self.kv_cache.update(input_pos, k, v, slot)  # [B, H_kv, S, hd]
        # else (training, no cache): attend over this block alone (mask None + kv_len T = causal)
        if kv_len is not None:
            # Eager-mode shortcut: columns >= kv_len are masked anyway, so skip reading them.
            k, v = k[:, :, :kv_len], v[:, :, :kv_len]
            mask = None if mask is None else mask[..., :kv_len]
        gqa = a.n_head != a.n_local_heads
        if mask is None:
            # Caller guarantees every column < kv_len is visible: either one query (decode) or a
            # fresh causal block starting at column 0 (prefill / first decoder step).
            assert seqlen == 1 or kv_len == seqlen
            y = F.scaled_dot_product_attention(q, k, v, is_causal=seqlen > 1, enable_gqa=gqa)
        elif isinstance(mask, BlockMask):
            # Per-row KV lengths as a block mask (``generate.length_block_mask``): compiled, one fused
            # kernel that visits only each row's own KV blocks (GQA included), not the whole window.
            y = flex_attention(q, k, v, block_mask=mask, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return F.linear(y.transpose(1, 2).reshape(bsz, seqlen, a.n_head * a.head_dim), self.wo.weight)


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        # gate (w1) and up (w3) stay separate: a fused [2*hidden, dim] matmul hits a CPU GEMM
        # slow path for batch > 1 at csm-1b sizes (measured ~1.6x slower), and gains nothing at batch 1.
        self.w1 = nn.Linear(args.dim, args.intermediate_size, bias=False)
        self.w3 = nn.Linear(args.dim, args.intermediate_size, bias=False)
        self.w2 = nn.Linear(args.intermediate_size, args.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.silu(F.linear(x, self.w1.weight)) * F.linear(x, self.w3.weight), self.w2.weight)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, input_pos: Tensor, kv_len: int | None,
        slot: int = 0,
    ) -> Tensor:
        # `.forward` directly: nn.Module.__call__'s hook handling is measurable per-op overhead here.
        h = x + self.attention.forward(self.attention_norm.forward(x), cos, sin, mask, input_pos, kv_len, slot)
        return h + self.feed_forward.forward(self.ffn_norm.forward(h))


class Transformer(nn.Module):
    """A stack of Llama blocks over input embeddings; returns normed hidden states."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layer))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.grad_ckpt = False  # training only: recompute blocks in backward (see forward)
        self.init_buffers()

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)make the RoPE tables: at construction, and after weights were loaded onto a meta-built model.

        They stay fp32 even for bf16 weights (bf16 angles lose precision); they are cast at use.
        """
        cos, sin = rope_tables(self.args)
        self.register_buffer("rope_cos", cos.to(device), persistent=False)  # [S, hd] fp32
        self.register_buffer("rope_sin", sin.to(device), persistent=False)

    def setup_caches(self, max_batch_size: int, dtype: torch.dtype) -> None:
        a = self.args
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(max_batch_size, a.max_seq_len, a.n_local_heads, a.head_dim, dtype).to(
                self.norm.weight.device
            )

    def reset_caches(self) -> None:
        for layer in self.layers:
            if layer.attention.kv_cache is not None:
                layer.attention.kv_cache.reset()

    def forward(
        self, x: Tensor, input_pos: Tensor, mask: Tensor | None = None, kv_len: int | None = None, slot: int = 0
    ) -> Tensor:
        """Run the stack: the one forward of inference (prefill, frame step) and training.

        Args:
            x: input embeddings ``[B, T, dim]``.
            input_pos: positions = KV-cache columns = RoPE positions: ``[T]`` shared by the batch
                (prefill of one slot, training), or ``[B, 1]`` one per row (batched decode).
            mask: attention mask ``[B, 1, T, S]`` (bool, True = may attend), or None when every
                column below ``kv_len`` is visible (causal within a block that starts at column 0).
            kv_len: eager-only hint that columns >= kv_len are all masked (None under compile).
            slot: the batch's rows are cache slots ``slot .. slot+B-1`` (prefill: one slot).

        Without KV caches (training: ``setup_caches`` never called, or :meth:`drop_caches`) the
        layers attend over ``x`` alone and are called through ``nn.Module.__call__`` so FSDP /
        activation-checkpoint hooks fire; ``grad_ckpt`` recomputes each block in backward.
        """
        if input_pos.ndim == 1:  # every row at the same columns: one table lookup for the batch
            cos, sin = self.rope_cos[input_pos][None, :, None], self.rope_sin[input_pos][None, :, None]  # [1, T, 1, hd]
        else:
            cos, sin = self.rope_cos[input_pos].unsqueeze(2), self.rope_sin[input_pos].unsqueeze(2)  # [B, T, 1, hd]
        if cos.dtype != x.dtype:
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if self.layers[0].attention.kv_cache is None:  # training: hooks must fire
            for layer in self.layers:
                if self.grad_ckpt and torch.is_grad_enabled():
                    # Recompute the block in backward: activation memory O(layers * B*T*dim) instead of O(all).
                    x = checkpoint(layer, x, cos, sin, mask, input_pos, kv_len, use_reentrant=False)
                else:
                    x = layer(x, cos, sin, mask, input_pos, kv_len)
            return self.norm(x)
        for layer in self.layers:
            x = layer.forward(x, cos, sin, mask, input_pos, kv_len, slot)
        return self.norm.forward(x)

    def drop_caches(self) -> None:
        """No KV caches: whole sequences at once (training)."""
        for layer in self.layers:
            layer.attention.kv_cache = None


class CSM(nn.Module):
    """Backbone, depth decoder, embeddings and heads (names mirror Sesame's ``Model``)."""

    def __init__(self, args: CSMArgs):
        super().__init__()
        self.args = args
        bb, dec = args.backbone, args.decoder
        self.text_embeddings = nn.Embedding(args.text_vocab_size, bb.dim)
        # One table for all codebooks: codebook i, code c lives at row i * audio_vocab_size + c.
        # The depth decoder reads the same table (tied in every released checkpoint).
        self.audio_embeddings = nn.Embedding(args.audio_vocab_size * args.audio_num_codebooks, bb.dim)
        self.backbone = Transformer(bb)
        self.decoder = Transformer(dec)
        self.projection = nn.Linear(bb.dim, dec.dim, bias=False)  # backbone width -> decoder width
        self.codebook0_head = nn.Linear(bb.dim, args.audio_vocab_size, bias=False)
        # Codebooks 1..31 each have their own head: [K-1, dec_dim, vocab].
        self.audio_head = nn.Parameter(torch.empty(args.audio_num_codebooks - 1, dec.dim, args.audio_vocab_size))
        self._init_own_buffers()
        self.max_batch_size = 0

    def _init_own_buffers(self, device: torch.device | str | None = None) -> None:
        k = self.args.audio_num_codebooks
        self.register_buffer(
            "codebook_offsets", torch.arange(k, device=device) * self.args.audio_vocab_size, persistent=False
        )
        # Causal mask of the decoder's 32-position cache, indexed by position.
        self.register_buffer(
            "decoder_causal", torch.ones(k, k, dtype=torch.bool, device=device).tril(), persistent=False
        )
        self.register_buffer("decoder_positions", torch.arange(k, device=device), persistent=False)

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """The one place the non-persistent buffers are made (RoPE tables, codebook offsets, the
        decoder's causal mask and positions): by ``__init__``, and again on ``device`` by the loader,
        whose model was built on the meta device where buffers hold no values."""
        self.backbone.init_buffers(device)
        self.decoder.init_buffers(device)
        self._init_own_buffers(device)

    def setup_caches(self, max_batch_size: int, dtype: torch.dtype | None = None) -> None:
        """Allocate both KV caches once for up to ``max_batch_size`` rows."""
        dtype = dtype or self.codebook0_head.weight.dtype
        self.backbone.setup_caches(max_batch_size, dtype)
        self.decoder.setup_caches(max_batch_size, dtype)
        self.max_batch_size = max_batch_size

    def embed_tokens(self, tokens: Tensor, tokens_mask: Tensor) -> Tensor:
        """Embed prompt rows ``[B, T, K+1]`` (K codebooks + text column) under ``tokens_mask``.

        A text position uses only its text column; an audio frame sums its K codebook embeddings.
        """
        text = self.text_embeddings(tokens[..., -1])  # [B, T, D]
        audio = self.audio_embeddings(tokens[..., :-1] + self.codebook_offsets)  # [B, T, K, D]
        mask = tokens_mask.to(text.dtype)
        return (audio * mask[..., :-1, None]).sum(2) + text * mask[..., -1:]

    def embed_frame(self, codes: Tensor) -> Tensor:
        """Backbone input for one generated frame: codes ``[B, K]`` -> ``[B, 1, D]``."""
        return self.audio_embeddings(codes + self.codebook_offsets).sum(1, keepdim=True)

    def embed_code(self, codebook: int, codes: Tensor) -> Tensor:
        """Decoder input for codebook ``codebook``: codes ``[B]`` -> projected ``[B, 1, dec_dim]``."""
        return self.projection(self.audio_embeddings(codes + codebook * self.args.audio_vocab_size)).unsqueeze(1)
