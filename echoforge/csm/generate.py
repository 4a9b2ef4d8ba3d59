"""Fixed-shape tensor functions for CSM inference: prefill, one frame, sampling.

Everything here is a plain function over tensors: no ``.item()``, no branching on tensor
values, so ``decode_frame`` can be wrapped by ``torch.compile(mode="reduce-overhead")`` /
CUDA graphs (the generator does that on CUDA only). Python-level arguments (``kv_len``,
``greedy``, ``topk``) are static per call and become compile-time constants.
"""

from __future__ import annotations

import torch
from torch import Tensor

from echoforge.csm.model import CSM


def sample(
    logits: Tensor,
    temperature: Tensor,
    topk: Tensor | None,
    kmax: int,
    generator: torch.Generator | None,
    any_greedy: bool = True,
) -> Tensor:
    """Top-k sampling with per-row temperature; rows with temperature 0 take the argmax.

    Args:
        logits: ``[B, V]``.
        temperature: ``[B]`` float; 0 means greedy for that row.
        topk: ``[B]`` long, each row's k (<= ``kmax``); None when every row uses ``kmax``.
        kmax: static upper bound of ``topk`` (a Python int, so shapes stay fixed).
        generator: RNG for the exponential draw (seeded by the caller for reproducibility).
        any_greedy: static hint; False skips the argmax branch.

    Returns:
        ``[B]`` long token ids.
    """
    logits = logits.float()
    vals, idx = (logits / temperature.clamp_min(1e-5)[:, None]).topk(min(kmax, logits.shape[-1]), dim=-1)  # [B, k]
    if topk is not None:
        keep = torch.arange(vals.shape[-1], device=vals.device)[None, :] < topk[:, None]
        vals = vals.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(vals, dim=-1)
    # argmax(p / q) with q ~ Exp(1) is an exact draw from p without a host sync (gpt-fast's trick).
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    sampled = idx.gather(-1, (probs / q).argmax(-1, keepdim=True)).squeeze(-1)
    if not any_greedy:
        return sampled
    return torch.where(temperature > 0, sampled, logits.argmax(-1))


class Sampler:
    """Per-batch sampling settings, so the frame step takes one argument for them.

    Decisions that depend only on the settings (all greedy? one k for all rows?) are made
    here once, in Python, and become static branches in the hot path.
    """

    def __init__(self, temperature: Tensor, topk: Tensor, kmax: int, generator: torch.Generator | None):
        self.temperature, self.kmax, self.generator = temperature, kmax, generator
        self.greedy = bool((temperature == 0).all())
        self.any_greedy = bool((temperature == 0).any())
        self.topk = None if bool((topk == kmax).all()) else topk

    def __call__(self, logits: Tensor) -> Tensor:
        if self.greedy:
            return logits.argmax(-1)
        return sample(logits, self.temperature, self.topk, self.kmax, self.generator, self.any_greedy)


def prefill(
    model: CSM, tokens: Tensor, tokens_mask: Tensor, rope_pos: Tensor, valid: Tensor | None, kv_len: int | None = None
) -> Tensor:
    """Run the backbone over the whole prompt and return the last position's hidden state.

    Args:
        tokens: ``[B, T, K+1]`` prompt rows (left-padded for batches).
        tokens_mask: ``[B, T, K+1]`` bool.
        rope_pos: ``[B, T]`` per-row positions (padding rows may hold anything >= 0).
        valid: ``[B, S]`` bool, True for cache columns holding real (non-padding) tokens;
            None when no row is padded (then plain causal attention).
        kv_len: eager-only; pass ``T``.

    Returns:
        ``[B, D]`` backbone hidden state at the last prompt position.
    """
    t = tokens.shape[1]
    input_pos = torch.arange(t, device=tokens.device)
    mask = None
    if valid is not None or kv_len is None:
        s = model.backbone.args.max_seq_len
        causal = torch.ones(t, s, dtype=torch.bool, device=tokens.device).tril()  # [T, S]
        mask = (
            causal[None, None] if valid is None else (causal[None] & valid[:, None, :]).unsqueeze(1)
        )  # [B|1, 1, T, S]
        # A left-padding row attends to nothing real; let it see itself so softmax stays finite.
        mask = mask | torch.eye(t, s, dtype=torch.bool, device=tokens.device)[None, None]
    h = model.backbone(model.embed_tokens(tokens, tokens_mask), rope_pos, input_pos, mask, kv_len)
    return h[:, -1]


def sample_codebooks(model: CSM, h: Tensor, sampler: Sampler, slice_kv: bool = True) -> Tensor:
    """Pick all K codes of one frame from the backbone state ``h`` ``[B, D]`` -> ``[B, K]``.

    Codebook 0 comes from ``codebook0_head``; codebooks 1..K-1 from the depth decoder, whose
    cache is simply overwritten from position 0 each frame (the causal mask hides old columns),
    so nothing is reallocated or cleared.
    """
    k = model.args.audio_num_codebooks
    b = h.shape[0]
    c0 = sampler(model.codebook0_head(h))  # [B]
    codes = [c0]
    # Positions 0 and 1: the projected backbone state and codebook 0's embedding.
    x = torch.cat([model.projection(h).unsqueeze(1), model.embed_code(0, c0)], dim=1)  # [B, 2, dec_dim]
    positions = model.decoder_positions  # [K] = arange(K); slices of it are static per step
    pos = positions[:2]
    for i in range(1, k):
        # Decoder positions are the same for every row (rope_pos=None).
        if slice_kv:  # eager: attend over exactly the live prefix, no mask needed
            out = model.decoder(x, None, pos, None, i + 1)
        else:  # static shapes: full 32-column cache under the causal mask
            out = model.decoder(x, None, pos, model.decoder_causal[pos][None, None].expand(b, 1, -1, -1), None)
        ci = sampler(out[:, -1] @ model.audio_head[i - 1])  # logits [B, vocab] -> [B]
        codes.append(ci)
        x = model.embed_code(i, ci)
        pos = positions[i + 1 : i + 2]
    return torch.stack(codes, dim=1)


def backbone_step(
    model: CSM, frame: Tensor, input_pos: Tensor, pos: int, rope_pos: Tensor, valid: Tensor | None
) -> Tensor:
    """Eager step: feed one generated frame ``[B, K]`` at cache column ``pos``; return ``[B, D]``.

    ``input_pos`` is ``[pos]`` as a tensor; ``valid`` ``[B, S]`` marks real columns of left-padded
    batches (None: nothing padded, so RoPE positions equal cache columns and no mask is needed).
    """
    if valid is None:
        return model.backbone(model.embed_frame(frame), None, input_pos, None, pos + 1)[:, -1]
    mask = valid[:, None, None, :]  # columns > pos are cut by kv_len
    return model.backbone(model.embed_frame(frame), rope_pos[:, None], input_pos, mask, pos + 1)[:, -1]


def decode_frame(
    model: CSM, h: Tensor, input_pos: Tensor, rope_pos: Tensor, valid: Tensor, sampler: Sampler
) -> tuple[Tensor, Tensor]:
    """One full frame with static shapes (the compiled/CUDA-graph path).

    Args:
        h: ``[B, D]`` backbone state from the previous step.
        input_pos: ``[1]`` cache column for this frame's backbone step.
        rope_pos: ``[B]`` RoPE position for each row.
        valid: ``[B, S]`` bool, real columns (every column a row will generate into is True).

    Returns:
        ``(frame [B, K], h_next [B, D])``.
    """
    frame = sample_codebooks(model, h, sampler, slice_kv=False)
    s = valid.shape[1]
    mask = (valid & (torch.arange(s, device=h.device) <= input_pos))[:, None, None, :]
    h_next = model.backbone(model.embed_frame(frame), rope_pos[:, None], input_pos, mask, None)[:, -1]
    return frame, h_next
