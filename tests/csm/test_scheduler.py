"""Continuous batching: rows join, leave and share frames without changing each other's audio."""

from __future__ import annotations

import pytest
import torch

from echoforge.csm import Segment
from echoforge.csm.generator import CSMGenerator, Request
from echoforge.csm.scheduler import FrameScheduler, SchedulerBusy

TEXTS = ["how are you today", "good morning", "hello world this is a test", "one two three four five"]


@pytest.fixture(scope="module")
def gen(tiny_csm_dir):
    """A generator of its own (these tests reshape its scheduler), 4 slots."""
    return CSMGenerator.from_pretrained(tiny_csm_dir, device="cpu", max_batch_size=4)


def ctx(seed: int, frames: int = 6) -> list[Segment]:
    return [Segment(1, "yes", torch.randint(0, 2048, (frames, 32), generator=torch.Generator().manual_seed(seed)))]


def solo(gen: CSMGenerator, req: Request) -> torch.Tensor:
    """The request alone on a fresh single-slot scheduler."""
    sched = manual(gen, max_rows=1, max_waiting=0)
    return drive(sched, [sched.submit(req)])[0]


def drive(sched: FrameScheduler, streams, until=None) -> list[torch.Tensor]:
    """Step a manual scheduler until every stream ended; collect each stream's frames."""
    got: list[list[torch.Tensor]] = [[] for _ in streams]
    done = [False] * len(streams)
    with torch.inference_mode():
        while not all(done):
            sched.step()
            for i, st in enumerate(streams):
                q = st._row.out
                while not q.empty():
                    item = q.get()
                    if isinstance(item, torch.Tensor):
                        got[i].append(item)
                    else:
                        done[i] = True
            if until is not None and until(got):
                break
    return [torch.stack(g) if g else torch.zeros(0, 32, dtype=torch.long) for g in got]


def manual(gen: CSMGenerator, **kw) -> FrameScheduler:
    """A scheduler the test steps by hand (no background thread)."""
    sched = gen.make_scheduler(**{"max_rows": 4, "max_waiting": 8, **kw})
    sched._thread = object()  # never start the background thread: the test steps it
    return sched


def reqs(temperature: float = 0.0) -> list[Request]:
    return [
        Request(t, speaker=i % 2, context=ctx(i, 3 + 2 * i), max_audio_length_ms=(6 + 3 * i) * 80,
                temperature=temperature, topk=[50, 10, 2051, 1][i], seed=100 + i)
        for i, t in enumerate(TEXTS)
    ]  # fmt: skip


def test_greedy_rows_in_a_batch_equal_solo_runs(gen):
    rs = reqs(0.0)
    sched = manual(gen)
    batched = drive(sched, [sched.submit(r) for r in rs])
    assert sched.stats["max_rows_seen"] == 4  # they really shared frames
    for r, got in zip(rs, batched, strict=True):
        assert torch.equal(got, solo(gen, r)), r.text
    assert [b.shape[0] for b in batched] == [6, 9, 12, 15]


def test_seeded_sampled_rows_equal_solo_runs_and_seeds_matter(gen):
    rs = reqs(0.9)
    rs[1].temperature = 0.0  # a greedy neighbour in the same frames
    sched = manual(gen)
    batched = drive(sched, [sched.submit(r) for r in rs])
    for r, got in zip(rs, batched, strict=True):
        assert torch.equal(got, solo(gen, r)), r.text
    other = Request(rs[0].text, 0, rs[0].context, rs[0].max_audio_length_ms, 0.9, 50, seed=999)
    assert not torch.equal(solo(gen, other), batched[0])


def test_rows_joining_and_leaving_mid_flight_do_not_change_others(gen):
    a, b, c = reqs(0.9)[:3]
    a.max_audio_length_ms = 20 * 80
    sched = manual(gen)
    sa, sc = sched.submit(a), sched.submit(c)
    # Run until A has 5 frames, then B joins; cancel C after it has 3 frames.
    first = drive(sched, [sa, sc], until=lambda g: len(g[0]) >= 5)
    sb = sched.submit(b)
    sc.cancel()
    rest = drive(sched, [sa, sb])
    got_a = torch.cat([first[0], rest[0]])
    assert torch.equal(got_a, solo(gen, a))
    assert torch.equal(rest[1], solo(gen, b))
    assert sched.active == 0 and sched.stats["rows_done"] == 3


def test_cancel_frees_the_slot_and_admission_is_bounded(gen):
    sched = manual(gen, max_rows=1, max_waiting=1)
    long = Request("how are you today", max_audio_length_ms=200 * 80, temperature=0)
    s1 = sched.submit(long)
    s2 = sched.submit(Request("good morning", max_audio_length_ms=4 * 80, temperature=0))
    with pytest.raises(SchedulerBusy) as err:
        sched.submit(Request("hello world"))
    assert err.value.retry_after >= 1
    drive(sched, [s1], until=lambda g: len(g[0]) >= 3)
    assert sched.active == 1 and len(sched.waiting) == 1  # s2 waits for the only slot
    s1.cancel()
    out = drive(sched, [s1, s2])
    assert out[1].shape[0] == 4 and sched.active == 0
    assert torch.equal(out[1], solo(gen, Request("good morning", max_audio_length_ms=4 * 80, temperature=0)))


def test_chunked_prefill_interleaves_and_equals_whole_prefill(gen):
    """A long prompt is prefilled 16 positions at a time while a running row keeps its frames coming."""
    sched = manual(gen, prefill_chunk=16)
    running = Request("good morning", max_audio_length_ms=30 * 80, temperature=0)
    big = Request("how are you today", context=ctx(5, 120), max_audio_length_ms=5 * 80, temperature=0)
    s_run = sched.submit(running)
    drive(sched, [s_run], until=lambda g: len(g[0]) >= 1)
    s_big = sched.submit(big)
    frames_before = sched.stats["frames"]
    while sched.prefilling is not None or sched.waiting:
        sched.step()
    # ~130 prompt rows in chunks of 16: the running row got one frame per chunk meanwhile.
    assert sched.stats["frames"] - frames_before >= 7
    out = drive(sched, [s_run, s_big])
    assert torch.equal(out[1], solo(gen, big))


def test_window_holds_per_row(tmp_path):
    """A row asking for more audio than its window holds stops at the window; its neighbour is unaffected.

    A 96-position window (the real one is 2048) keeps this quick.
    """
    from .tiny_models import build_tiny_csm

    gen = CSMGenerator.from_pretrained(build_tiny_csm(tmp_path, max_position_embeddings=96), device="cpu", max_batch_size=2)
    assert gen.window == 96
    sched = manual(gen, max_rows=2)
    huge = Request("good morning", max_audio_length_ms=3000 * 80, temperature=0)
    short = Request("how are you today", max_audio_length_ms=10 * 80, temperature=0)
    tok, _, frames = gen.build_prompt("good morning", 0, [], 3000)
    s_huge, s_short = sched.submit(huge), sched.submit(short)
    out = drive(sched, [s_huge, s_short])
    assert out[0].shape[0] == frames == gen.window - tok.shape[0]
    assert s_huge.seq.cache_len == gen.window  # every cache column used, none beyond
    assert torch.equal(out[1], solo(gen, short))


def test_background_scheduler_streams_concurrent_requests(tiny_generator):
    """The generator's own scheduler thread: concurrent generate_codes calls from threads."""
    from concurrent.futures import ThreadPoolExecutor

    rs = reqs(0.0)
    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda r: tiny_generator.generate_codes(
            r.text, r.speaker, r.context, r.max_audio_length_ms, r.temperature, r.topk, r.seed), rs))  # fmt: skip
    for r, got in zip(rs, outs, strict=True):
        assert torch.equal(got, tiny_generator.generate_codes(r.text, r.speaker, r.context, r.max_audio_length_ms, 0.0))
    # Closing a stream early cancels its row.
    it = iter(tiny_generator.scheduler.submit(Request("hello world", max_audio_length_ms=500 * 80, temperature=0)))
    next(it)
    it.close()
    from _servers import wait_until

    wait_until(lambda: tiny_generator.scheduler.active == 0, what="the closed stream's row freed")


@pytest.fixture
def forced_eos(monkeypatch):
    """Rows say EOS (an all-zero frame) at a frame index that depends only on their own RNG key,
    so EOS handling is exercised and solo/batched runs must still agree."""
    from echoforge.csm import generate as G

    real = G.sample_codebooks

    def with_eos(model, h, sampler, slice_kv=True):
        frame = real(model, h, sampler, slice_kv)
        at = sampler.key % 5 + 3  # EOS at frame 3..7 of each piece
        return torch.where((sampler.counter == at)[:, None], torch.zeros_like(frame), frame)

    monkeypatch.setattr(G, "sample_codebooks", with_eos)


def test_static_path_with_a_frame_in_flight_equals_eager(tiny_csm_dir, gen, forced_eos, monkeypatch):
    """The CUDA path's shape (fixed-size sampled step, batch buckets, one frame in flight before the
    host reads codes back), run on CPU: every row equals its eager solo run, EOS and pieces included."""
    static = CSMGenerator.from_pretrained(tiny_csm_dir, device="cpu", max_batch_size=4)
    static.static = True  # what compile=True selects on CUDA (uncompiled here)
    for g in (static, gen):
        monkeypatch.setattr(g, "max_piece_chars", 20)
    rs = reqs(0.9)
    for r in rs:
        r.max_audio_length_ms = 12 * 80  # > the latest forced EOS (frame 7)
    rs[2].text = "hello world. how are you today? i am fine thanks."  # three pieces, EOS in each
    rs[2].max_audio_length_ms = 40 * 80
    sched = manual(static, lag=True)
    assert sched.lag
    batched = drive(sched, [sched.submit(r) for r in rs[:3]])
    late = drive(sched, [sched.submit(rs[3])])  # a bucket of 1 after a bucket of 4
    for r, got in zip(rs, [*batched, *late], strict=True):
        want = solo(gen, r)
        assert torch.equal(got, want), r.text
        assert got.shape[0] < r.max_audio_length_ms // 80  # EOS ended it early
    sched.step()  # drains the last in-flight frame (of rows that already ended: dropped)
    assert sched.active == 0 and sched._pending is None


def test_sampled_frame_step_traces_as_one_graph_per_bucket():
    """fullgraph=True: sampling (counter-based RNG, per-row settings as tensors) never breaks the
    graph, and new temperatures, top-k, seeds and positions reuse the compiled step."""
    from echoforge.csm import generate as G
    from echoforge.csm.model import CSM, CSMArgs, ModelArgs

    small = dict(n_layer=1, n_head=2, n_local_heads=1, dim=32, intermediate_size=64, max_seq_len=64, rope_scaling=None)
    torch.manual_seed(0)
    m = CSM(CSMArgs(ModelArgs(**small), ModelArgs(**small), text_vocab_size=16, audio_vocab_size=2051,
                    audio_num_codebooks=4)).eval()  # fmt: skip
    m.setup_caches(2)
    compiles = []

    def backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward

    step = torch.compile(G.frame_step, backend=backend, fullgraph=True, dynamic=False)
    with torch.inference_mode():
        for trial in range(3):
            g = torch.Generator().manual_seed(trial)
            h = torch.randn(2, 32, generator=g)
            pos = torch.randint(0, 60, (2,), generator=g)
            sampler = G.Sampler(torch.rand(2, generator=g), torch.randint(1, 300, (2,), generator=g),
                                torch.randint(0, 2**32, (2,), generator=g), torch.randint(0, 99, (2,), generator=g))  # fmt: skip
            frame, h_next = step(m, h, pos, sampler)
            ref_frame, ref_h = G.frame_step(m, h, pos, sampler)
            assert torch.equal(frame, ref_frame) and torch.allclose(h_next, ref_h)
    assert len(compiles) == 1


def test_warm_up_covers_exactly_the_batch_sizes_the_compiled_step_runs():
    """Warm-up captures one graph per size the static path can pick (6 slots: 5 and 6 rows run at 6)."""
    from echoforge.csm.runner import bucket_for, buckets

    assert buckets(6) == [1, 2, 4, 6] and buckets(64) == [1, 2, 4, 8, 16, 32, 64]
    assert {bucket_for(n, 6) for n in range(1, 7)} == set(buckets(6))
    assert [bucket_for(n, 64) for n in (1, 3, 5, 33)] == [1, 4, 8, 64]
