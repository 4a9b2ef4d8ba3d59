"""Attention that scales with each row's real length (issue #28 item 1): the static step's backbone
attends through FlexAttention with a block mask built from per-row lengths (one fused kernel when
compiled on CUDA, visiting only each row's own KV blocks), exact against today's SDPA over the whole
window under a mask, on CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

from echoforge.csm import generate as G
from echoforge.csm.model import CSM, CSMArgs, ModelArgs
from echoforge.csm.runner import ModelRunner, buckets

WINDOW = 512


def small_csm() -> CSM:
    small = dict(n_layer=2, n_head=4, n_local_heads=2, dim=32, intermediate_size=64, max_seq_len=WINDOW,
                 rope_scaling=None)  # fmt: skip
    m = CSM(CSMArgs(ModelArgs(**small), ModelArgs(**small), text_vocab_size=16, audio_vocab_size=2051,
                    audio_num_codebooks=4)).eval()  # fmt: skip
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():  # every weight (audio_head is allocated empty), decisive logits
            p.normal_(0.0, 0.2, generator=g)
    return m


def test_block_mask_visits_only_each_rows_blocks_and_equals_masked_sdpa():
    pos = torch.tensor([0, 127, 128, 300, WINDOW - 1])  # block edges, mid-block, the last column
    bm = G.length_block_mask(pos, WINDOW, G.length_mask_mod(pos))
    assert bm.kv_num_blocks.view(-1).tolist() == [1, 1, 2, 3, 4]  # pos // 128 + 1: each row's own length
    b, h, hkv, d = len(pos), 8, 2, 16
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, n, 1 if n == h else WINDOW, d, generator=g) for n in (h, hkv, hkv))
    mask = (torch.arange(WINDOW)[None, :] <= pos[:, None])[:, None, None, :]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    got = flex_attention(q, k, v, block_mask=bm, enable_gqa=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _run(attention: str, temperature: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    m = small_csm()
    runner = ModelRunner(m, torch.device("cpu"), max_rows=3, static=True, attention=attention)
    assert (runner.mask_mod is not None) == (attention == "flex")
    g = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for slot, p in enumerate((5, 130, 400)):  # rows in different KV blocks
            m.backbone.layers[0].attention.kv_cache.k_cache[slot].normal_(generator=g)  # history to attend to
            m.backbone.layers[0].attention.kv_cache.v_cache[slot].normal_(generator=g)
            runner.start_row(slot, torch.randn(32, generator=g), pos=p, temperature=temperature, topk=50, key=slot)
        frames = [runner.decode(3, None)[1] for _ in range(4)]
    return frames, runner.h.clone()


def test_static_step_with_length_attention_gives_the_codes_of_masked_sdpa():
    for temperature in (0.0, 0.9):  # greedy and sampled (the same counter-based noise)
        flex, h_flex = _run("flex", temperature)
        sdpa, h_sdpa = _run("sdpa", temperature)
        for a, b in zip(flex, sdpa, strict=True):
            assert torch.equal(a, b)
        torch.testing.assert_close(h_flex, h_sdpa, rtol=1e-5, atol=1e-5)


def test_the_length_aware_step_traces_once_per_bucket():
    """fullgraph: the block mask is built inside the step from the persistent positions, so rows moving
    to new columns (and new blocks) never trace again."""
    m = small_csm()
    runner = ModelRunner(m, torch.device("cpu"), max_rows=2, static=True, attention="flex")
    traced = []

    def backend(gm, example_inputs):
        traced.append(gm)
        return gm.forward

    torch._dynamo.reset()
    runner.step_fn = torch.compile(G.frame_step, backend=backend, fullgraph=True, dynamic=False)
    runner.warmup(kmax_bounds=[256])
    assert len(traced) == len(buckets(2))
    with torch.inference_mode():
        for slot in range(2):
            runner.start_row(slot, torch.randn(32), pos=120 + 10 * slot, temperature=0.9, topk=50, key=slot)
        for _ in range(12):  # both rows cross into their second KV block
            runner.decode(2, None)
    assert runner.pos[:2].tolist() == [132, 142]
    assert len(traced) == len(buckets(2))
