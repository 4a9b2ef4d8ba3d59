"""Fewer ops to compile per bucket (issue #28 item 5): the static frame as three graphs, the
depth-decoder's codebook step traced once and replayed for codebooks 2..31 (the codebook is data),
exact against the frame traced whole."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from echoforge.csm import generate as G
from echoforge.csm.runner import ModelRunner, buckets

from .test_length_attention import small_csm
from .test_steady_state_host_work import HostOps


def _frames(graphs: str, attention: str, temperature: float, n: int = 4) -> list[torch.Tensor]:
    m = small_csm()
    runner = ModelRunner(m, torch.device("cpu"), max_rows=3, static=True, attention=attention, graphs=graphs)
    g = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for slot, p in enumerate((5, 130, 400)):
            runner.start_row(slot, torch.randn(32, generator=g), pos=p, temperature=temperature, topk=50, key=slot)
        return [runner.decode(3, None)[1] for _ in range(n)] + [runner.h.clone()]


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_codebook_graphs_give_the_frame_graphs_codes(attention):
    for temperature in (0.0, 0.9):
        *split, h_split = _frames("codebook", attention, temperature)
        *whole, h_whole = _frames("frame", attention, temperature)
        for a, b in zip(split, whole, strict=True):
            assert torch.equal(a, b)
        assert torch.equal(h_split, h_whole)  # the same ops on the same values


def test_the_codebook_step_is_traced_once_per_bucket_and_replayed():
    m = small_csm()
    runner = ModelRunner(m, torch.device("cpu"), max_rows=2, static=True, attention="flex", graphs="codebook")
    traced: Counter = Counter()
    calls: Counter = Counter()

    def counting(name):
        def backend(gm, example_inputs):
            traced[name] += 1
            return gm.forward

        fn = torch.compile(getattr(G, name), backend=backend, fullgraph=True, dynamic=False)

        def call(*args):
            calls[name] += 1
            return fn(*args)

        return call

    torch._dynamo.reset()
    runner.head_fn, runner.codebook_fn = counting("codebook_head"), counting("codebook_step")
    runner.backbone_fn = counting("backbone_step")
    runner.warmup()
    nb, nk = len(buckets(2)), len(runner.kmax_bounds())
    want = {"codebook_head": nb * nk, "codebook_step": nb * nk, "backbone_step": nb}
    assert dict(traced) == want
    with torch.inference_mode():
        for slot in range(2):
            runner.start_row(slot, torch.randn(32), pos=120 + 10 * slot, temperature=0.9, topk=50 + 2000 * slot,
                             key=slot)  # fmt: skip
        calls.clear()
        for _ in range(12):
            runner.decode(2, None)
    assert dict(traced) == want  # nothing traced after warm-up: every codebook replays the one step
    k = m.args.audio_num_codebooks
    assert calls == {"codebook_head": 12, "codebook_step": 12 * (k - 2), "backbone_step": 12}


def test_a_codebook_graphs_step_builds_no_tensor_from_host_data():
    m = small_csm()
    runner = ModelRunner(m, torch.device("cpu"), max_rows=4, static=True, attention="sdpa", graphs="codebook",
                         lag=True)  # fmt: skip
    with torch.inference_mode():
        for slot in range(3):
            runner.start_row(slot, torch.randn(32), pos=10 + slot, temperature=0.9, topk=50, key=slot)
        runner.decode(3, None)
        mode = HostOps()
        with mode:
            for _ in range(3):
                runner.decode(3, None)
    assert mode.seen == Counter()
    # the length-aware attention's block mask is built from the device positions alone, too
    # (flex_attention itself is a higher-order op a dispatch mode cannot enter on CPU)
    with mode:
        G.length_block_mask(runner.pos[:4], 512, runner.mask_mod or G.length_mask_mod(runner.pos))
    assert mode.seen == Counter()


@pytest.mark.slow
def test_inductor_compiles_the_three_graph_step_with_length_attention():
    """The GPU step's graphs through a real compiler (inductor's CPU backend here; ~1 min): the
    FlexAttention block mask built inside the backbone step lowers with fullgraph, and the compiled
    step gives the uncompiled step's codes."""

    def run(compiled: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        m = small_csm()
        r = ModelRunner(m, torch.device("cpu"), max_rows=3, static=True, attention="flex", graphs="codebook")
        if compiled:
            torch._dynamo.reset()
            r.head_fn, r.codebook_fn, r.backbone_fn = (
                torch.compile(f, backend="inductor", fullgraph=True, dynamic=False)
                for f in (G.codebook_head, G.codebook_step, G.backbone_step)
            )
        g = torch.Generator().manual_seed(1)
        with torch.inference_mode():
            for slot, p in enumerate((5, 130, 400)):
                r.start_row(slot, torch.randn(32, generator=g), pos=p, temperature=0.0, topk=50, key=slot)
            return [r.decode(3, None)[1] for _ in range(3)], r.h.clone()

    got, h_got = run(True)
    want, h_want = run(False)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(h_got, h_want, rtol=1e-5, atol=1e-5)
