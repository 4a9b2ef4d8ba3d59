"""Mimi decode batched across streams (issue #28 item 4): one call per chunk for all rows, each row's
audio equal to decoding that stream alone, whatever point each stream is at."""

from __future__ import annotations

import threading

import pytest
import torch

from echoforge.csm.mimi import MimiCodec
from echoforge.csm.mimi_batch import MimiBatcher
from echoforge.csm.mimi_stream import decode_batch

from .mimi_tiny import build_tiny_mimi

# Float rounding only: the same operations on a batch (oneDNN convolutions pick other kernels for
# B > 1; masked attention over left-padded caches) may sum in another order than on one row. The
# tiny random Mimi's audio peaks at ~20-40; measured differences are <= 5e-5 (~1e-6 of the peak),
# a wrong position, mask or state would differ by the signal's own size.
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module", params=[250, 5], ids=["window250", "window5"])
def codec(request):
    # window 5: the transformer's sliding window (5 steps = 2.5 frames) fills and slides within a few chunks
    return MimiCodec(build_tiny_mimi(sliding_window=request.param))


def codes_for(seed: int, frames: int) -> torch.Tensor:
    return torch.randint(0, 2048, (frames, 32), generator=torch.Generator().manual_seed(seed))


def test_decode_batch_equals_per_stream_decode(codec):
    # Three streams at different points: one fresh, two that already decoded 2 and 7 frames.
    streams = [codes_for(s, 30) for s in range(3)]
    ahead = [0, 2, 7]
    solo = [codec.streaming_decoder() for _ in streams]
    batch = [codec.streaming_decoder() for _ in streams]
    for d_s, d_b, c, a in zip(solo, batch, streams, ahead, strict=True):
        if a:
            d_s.decode(c[:a])
            d_b.decode(c[:a])
    pos = list(ahead)
    for n in (2, 8, 1, 8, 3):  # chunks of one size per call, as the batcher groups them
        rows = torch.stack([c[p : p + n] for c, p in zip(streams, pos, strict=True)])
        got = decode_batch(batch, rows)
        for i, (d, c, p) in enumerate(zip(solo, streams, pos, strict=True)):
            want = d.decode(c[p : p + n])
            assert got[i].shape == want.shape == (n * 1920,)
            torch.testing.assert_close(got[i], want, **TOL)
        pos = [p + n for p in pos]
    for d_s, d_b in zip(solo, batch, strict=True):
        assert d_b.frames_decoded == d_s.frames_decoded and d_b.cache_len == d_s.cache_len


def test_decode_batch_equals_the_whole_clip_decode(codec):
    c = codes_for(9, 12)
    dec = [codec.streaming_decoder(), codec.streaming_decoder()]
    out = [decode_batch(dec, torch.stack([c[i : i + 4], c[i : i + 4]])) for i in range(0, 12, 4)]
    full = codec.decode(c)
    for r in range(2):
        torch.testing.assert_close(torch.cat([o[r] for o in out]), full, rtol=1e-4, atol=1e-4)


def test_batcher_decodes_waiting_chunks_in_one_call(codec):
    """Chunks queued together (here: while the batcher is paused) go out in one call per chunk length;
    every chunk equals that stream decoded alone."""
    batcher = MimiBatcher(codec)
    n_streams, chunks = 5, [2, 8, 8, 3]
    streams = [codes_for(100 + s, sum(chunks)) for s in range(n_streams)]
    decs = [batcher.decoder() for _ in range(n_streams)]
    solos = [codec.streaming_decoder() for _ in range(n_streams)]
    p = 0
    for n in chunks:
        with batcher.paused():
            futs = [batcher.submit(d, c[p : p + n]) for d, c in zip(decs, streams, strict=True)]
        for f, solo, c in zip(futs, solos, streams, strict=True):
            torch.testing.assert_close(f.result(), solo.decode(c[p : p + n]), **TOL)
        p += n
    assert batcher.stats == {"chunks": n_streams * len(chunks), "calls": len(chunks), "graph_calls": 0,
                             "max_rows": n_streams}  # fmt: skip
    # two chunks of one stream in one round: the second waits for the first's state (next round)
    d = batcher.decoder()
    with batcher.paused():
        a, b = batcher.submit(d, streams[0][:1]), batcher.submit(d, streams[0][1:2])
    fresh = codec.streaming_decoder()
    torch.testing.assert_close(torch.cat([a.result(), b.result()]), fresh.decode(streams[0][:2]), **TOL)
    batcher.close()


def test_batcher_serves_streams_from_their_own_threads(codec):
    batcher = MimiBatcher(codec)
    n_streams, chunks = 6, [2, 8, 8, 3]
    streams = [codes_for(200 + s, sum(chunks)) for s in range(n_streams)]
    got: list[list[torch.Tensor]] = [[] for _ in range(n_streams)]
    barrier = threading.Barrier(n_streams)

    def run(i: int) -> None:
        dec = batcher.decoder()
        barrier.wait()
        p = 0
        for n in chunks:
            got[i].append(dec.decode(streams[i][p : p + n]))
            p += n

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    for i in range(n_streams):
        solo, p = codec.streaming_decoder(), 0
        for n, chunk in zip(chunks, got[i], strict=True):
            torch.testing.assert_close(chunk, solo.decode(streams[i][p : p + n]), **TOL)
            p += n
    assert batcher.stats["chunks"] == n_streams * len(chunks)


def test_generator_streams_through_the_batcher_equal_per_stream_decode(tiny_csm_dir):
    """The serving path with ``batch_decode=True`` (the CUDA default): concurrent streams' audio equals
    the same streams decoded each on its own (``batch_decode=False``), and chunks went out together."""
    from echoforge.csm import CSMGenerator

    reqs = [dict(text=f"stream {i} says hello", max_audio_length_ms=13 * 80, temperature=0.9, topk=50, seed=i)
            for i in range(4)]  # fmt: skip
    out = {}
    for batched in (True, False):
        gen = CSMGenerator.from_pretrained(tiny_csm_dir, device="cpu", max_batch_size=4, batch_decode=batched)
        got: list[list[torch.Tensor]] = [[] for _ in reqs]
        barrier = threading.Barrier(len(reqs))

        def run(i: int, gen=gen, got=got, barrier=barrier) -> None:
            barrier.wait()
            got[i] = list(gen.stream(**reqs[i], first_chunk_frames=2, chunk_frames=4))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(reqs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out[batched] = got
        if batched:
            assert gen.mimi_batcher.stats["chunks"] == sum(len(g) for g in got)
        else:
            assert gen.mimi_batcher is None
        gen.scheduler.close()
    for a, b in zip(out[True], out[False], strict=True):
        assert [c.numel() for c in a] == [c.numel() for c in b] == [2 * 1920, 4 * 1920, 4 * 1920, 3 * 1920]
        torch.testing.assert_close(torch.cat(a), torch.cat(b), **TOL)


# ---------------------------------------------------------------------- the compiled path (slot buffers, buckets)


@pytest.fixture(scope="module")
def codec5():
    return MimiCodec(build_tiny_mimi(sliding_window=5))


def run_rounds(batcher, codec, rounds, streams):
    """``rounds``: per round, {stream name: frames}; chunks of one round are queued together (one call per
    length). Each chunk is checked against the same stream decoded alone, eagerly. A name mapped to
    None closes that stream (its slot is free for the next one)."""
    decs, solos, pos = {}, {}, {}
    for rnd in rounds:
        futs = []
        with batcher.paused():
            for name, n in rnd.items():
                if n is None:
                    decs.pop(name).close()
                    continue
                if name not in decs:
                    decs[name], solos[name], pos[name] = batcher.decoder(), codec.streaming_decoder(), 0
                c = streams[name][pos[name] : pos[name] + n]
                futs.append((name, c, batcher.submit(decs[name], c)))
                pos[name] += n
        for name, c, f in futs:
            got, want = f.result(), solos[name].decode(c)
            assert got.shape == want.shape == (c.shape[0] * 1920,)
            torch.testing.assert_close(got, want, **TOL)
    return decs


ROUNDS = [
    {"a": 2, "b": 2, "c": 2},  # three fresh streams: bucket 4, one padding row
    {"a": 4, "b": 4},  # two rows: bucket 2
    {"c": 4, "d": 2},  # c alone (bucket 1) and d joins: two lengths, two calls
    {"a": 4, "c": 4, "d": 4, "b": None},  # three rows; b leaves
    {"e": 2, "a": 2},  # e joins in b's old slot (its state must read as fresh)
    {"a": 6, "c": 6, "d": 6, "e": 6},  # 6 frames: a compiled 4 and a compiled 2, four rows
    {"a": 3},  # 3 frames: a compiled 2 and a 1-frame remainder (not warmed: eager)
]


def test_compiled_batched_decode_is_exact_and_never_recompiles_after_warm_up(codec5):
    """The compiled step (traced by dynamo; a counting backend runs the traced graphs) over slot buffers:
    every chunk equals that stream decoded alone while streams join, leave, reuse a slot and change the
    row count within a bucket; nothing is traced after warm-up (one graph per bucket and length)."""
    traced = []

    def backend(gm, example_inputs):
        traced.append(gm)
        return gm.forward

    torch._dynamo.reset()
    batcher = MimiBatcher(codec5, max_rows=4, compile=True, chunk_frames=(2, 4), backend=backend)
    assert batcher.buckets == [1, 2, 4] and batcher.states.scratch == 8
    batcher.warmup()
    assert len(traced) == 3 * 2 and batcher.compile_error is None
    assert {(t["bucket"], t["frames"]) for t in batcher.warm_times} == {(b, m) for b in (1, 2, 4) for m in (2, 4)}
    streams = {k: codes_for(300 + i, 40) for i, k in enumerate("abcde")}
    decs = run_rounds(batcher, codec5, ROUNDS, streams)
    assert len(traced) == 6  # nothing traced after warm-up
    s = batcher.stats
    assert s["calls"] - s["graph_calls"] == 1 and s["graph_calls"] == 9  # only the 1-frame remainder ran eager
    assert decs["e"].slot == 1 and batcher.states.free == 8 - 4  # e took b's slot
    batcher.close()


def test_streams_beyond_the_slots_decode_from_their_own_state(codec5):
    batcher = MimiBatcher(codec5, max_rows=2, slots=2)
    streams = {k: codes_for(400 + i, 20) for i, k in enumerate("abc")}
    decs = run_rounds(batcher, codec5, [{"a": 2, "b": 2, "c": 2}, {"a": 4, "b": 4, "c": 4}, {"a": 1, "c": 1}], streams)
    assert [decs[k].slot for k in "abc"] == [0, 1, None] and decs["c"].dec is not None
    decs["a"].close()
    assert batcher.states.free == 1
    batcher.close()


def test_aot_compiled_decode_equals_eager(codec5):
    """Through AOTAutograd (``aot_eager``: the functionalized graph inductor would get, the slot buffers'
    in-place writes turned into graph outputs and copied back): the same audio as eager. (Inductor on
    this CPU: 69 s to compile one shape of the tiny Mimi, so not here; the CUDA test below runs it.)"""
    codec = codec5
    torch._dynamo.reset()
    batcher = MimiBatcher(codec, max_rows=2, compile=True, chunk_frames=(2,), backend="aot_eager")
    batcher.warmup(buckets=[2])
    assert batcher.compile_error is None
    streams = {k: codes_for(500 + i, 12) for i, k in enumerate("ab")}
    run_rounds(batcher, codec, [{"a": 2, "b": 2}] * 4, streams)
    assert batcher.stats["graph_calls"] == 4
    batcher.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_decode_exactly_and_capture_everything_at_warm_up():
    """On CUDA, the default: inductor + CUDA graphs (``reduce-overhead``), captured at warm-up on the
    batcher's thread; chunks equal per-stream eager decode in exact fp32, nothing compiles after warm-up
    and no graph is skipped (the slot buffers are mutated in place: static addresses)."""
    from torch._dynamo.utils import counters

    from echoforge.csm.generator import use_exact_math

    use_exact_math()
    codec = MimiCodec(build_tiny_mimi(sliding_window=5).cuda())
    torch._dynamo.reset()
    counters.clear()
    batcher = MimiBatcher(codec, max_rows=2, chunk_frames=(2,))
    assert batcher.compile and batcher.warmup() > 0 and batcher.compile_error is None
    graphs = counters["stats"]["unique_graphs"]
    streams = {k: codes_for(600 + i, 12) for i, k in enumerate("abc")}
    run_rounds(batcher, codec, [{"a": 2, "b": 2}, {"a": 2}, {"a": 2, "c": 2, "b": None}, {"a": 2, "c": 2}], streams)
    assert counters["stats"]["unique_graphs"] == graphs and batcher.stats["graph_calls"] == 4
    assert not counters["inductor"].get("cudagraph_skips"), dict(counters["inductor"])
    batcher.close()


def test_generator_warms_the_engines_chunk_lengths(tiny_csm_dir):
    """``csm.first_chunk_frames`` / ``csm.chunk_frames`` (the engine passes them to warm-up) are the
    lengths the batcher warms and splits chunks into, not only its defaults (2, 8)."""
    from echoforge.csm import CSMGenerator

    gen = CSMGenerator.from_pretrained(tiny_csm_dir, device="cpu", max_batch_size=2, batch_decode=True)
    assert gen.mimi_batcher.chunk_frames == [8, 2]
    gen.warmup(chunk_frames=(3, 5))
    assert gen.mimi_batcher.chunk_frames == [5, 3]
