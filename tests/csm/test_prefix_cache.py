"""Prefix caching of voice prompts, stable slots and the runner's per-slot state.

The voice prompt's KV is computed once and copied into every later request's slot; every code
must equal the run without the cache (solo, batched, joining mid-flight, after eviction,
long text in pieces).
"""

from __future__ import annotations

import pytest
import torch

from echoforge.csm import Segment
from echoforge.csm.generator import CSMGenerator, Request

from .test_scheduler import drive


@pytest.fixture(scope="module")
def gen(tiny_csm_dir):
    return CSMGenerator.from_pretrained(tiny_csm_dir, device="cpu", max_batch_size=4)


def voice(seed: int, frames: int = 40) -> Segment:
    codes = torch.randint(0, 2048, (frames, 32), generator=torch.Generator().manual_seed(seed))
    return Segment(0, "hello world this is my voice", codes, pinned=True)


def manual(gen: CSMGenerator, **kw):
    sched = gen.make_scheduler(**{"max_rows": 4, "max_waiting": 16, "prefill_chunk": 16, **kw})
    sched._thread = object()  # stepped by the test
    return sched


def uncached(gen: CSMGenerator, req: Request) -> torch.Tensor:
    sched = manual(gen, max_rows=1, prefix_cache_mb=0)
    out = drive(sched, [sched.submit(req)])[0]
    assert sched.stats["prefix_hits"] == 0
    return out


def reqs(v: Segment, temperature: float) -> list[Request]:
    texts = ["how are you today", "good morning", "one two three four five", "the quick brown fox"]
    return [Request(t, context=[v], max_audio_length_ms=(5 + 2 * i) * 80, temperature=temperature,
                    topk=[50, 10, 2051, 1][i], seed=10 + i) for i, t in enumerate(texts)]  # fmt: skip


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_solo_requests_with_a_cached_voice_equal_uncached(gen, temperature):
    v = voice(1)
    sched = manual(gen)
    rs = reqs(v, temperature)
    first = drive(sched, [sched.submit(rs[0])])[0]  # computes and stores the voice prompt's KV
    assert sched.stats["prefix_misses"] == 1 and len(sched.runner.prefix_cache) == 1
    tokens_before = sched.stats["prefill_tokens"]
    second = drive(sched, [sched.submit(rs[1])])[0]
    assert sched.stats["prefix_hits"] == 1
    prompt = gen.build_prompt(rs[1].text, 0, [v], 7)
    assert sched.stats["prefill_tokens"] - tokens_before == prompt.n_rows - prompt.prefix_len  # only its own text
    assert torch.equal(first, uncached(gen, rs[0]))
    assert torch.equal(second, uncached(gen, rs[1]))


def test_batched_rows_on_one_voice_share_the_prefix_and_equal_uncached(gen):
    v = voice(2)
    sched = manual(gen)
    rs = reqs(v, 0.9)
    out = drive(sched, [sched.submit(r) for r in rs])  # a burst: the first computes, the others load
    assert sched.stats["max_rows_seen"] == 4
    assert sched.stats["prefix_misses"] == 1 and sched.stats["prefix_hits"] == 3
    for r, got in zip(rs, out, strict=True):
        assert torch.equal(got, uncached(gen, r)), r.text


def test_a_row_joining_mid_flight_with_a_cached_prefix_changes_nobody(gen):
    v = voice(3)
    a, b, c = reqs(v, 0.9)[:3]
    a.max_audio_length_ms = 16 * 80
    sched = manual(gen)
    sa = sched.submit(a)
    first = drive(sched, [sa], until=lambda g: len(g[0]) >= 4)
    sb, sc = sched.submit(b), sched.submit(c)  # join while A runs, both hit the cache
    rest = drive(sched, [sa, sb, sc])
    assert sched.stats["prefix_hits"] == 2
    assert torch.equal(torch.cat([first[0], rest[0]]), uncached(gen, a))
    assert torch.equal(rest[1], uncached(gen, b))
    assert torch.equal(rest[2], uncached(gen, c))


def test_eviction_and_a_changed_voice_recompute_and_stay_exact(gen):
    v1, v2 = voice(4), voice(5)
    probe = manual(gen)
    drive(probe, [probe.submit(Request("good morning", context=[v1], max_audio_length_ms=3 * 80, temperature=0))])
    entry = probe.runner.prefix_cache.bytes
    assert entry > 0
    sched = manual(gen, prefix_cache_mb=1.5 * entry / 2**20)  # room for one voice
    cache = sched.runner.prefix_cache
    r1 = Request("how are you today", context=[v1], max_audio_length_ms=5 * 80, temperature=0.9, seed=3)
    r2 = Request("how are you today", context=[v2], max_audio_length_ms=5 * 80, temperature=0.9, seed=3)
    a = drive(sched, [sched.submit(r1)])[0]
    b = drive(sched, [sched.submit(r2)])[0]  # a changed voice: new key, and v1 is evicted
    assert cache.stats["evicted"] == 1 and len(cache) == 1
    again = drive(sched, [sched.submit(r1)])[0]  # recomputed
    assert sched.stats["prefix_hits"] == 0 and sched.stats["prefix_misses"] == 3
    want = uncached(gen, r1)
    assert torch.equal(a, want) and torch.equal(again, want)
    assert torch.equal(b, uncached(gen, r2)) and not torch.equal(a, b)


def test_long_text_in_pieces_and_window_rebuilds_use_the_cache_exactly(tiny_csm_dir, tmp_path):
    """Pieces continue after the cached voice prompt; a window overflow rebuilds from it (a hit)."""
    from .tiny_models import build_tiny_csm

    small = CSMGenerator.from_pretrained(build_tiny_csm(tmp_path, max_position_embeddings=160), device="cpu",
                                         max_batch_size=2)  # fmt: skip
    small.max_piece_chars = 20
    v = voice(6, frames=60)
    text = "hello world. how are you today? i am fine thanks. see you soon."
    r = Request(text, context=[v], max_audio_length_ms=120 * 80, temperature=0.9, seed=5)
    sched = manual(small, max_rows=2)
    warm = drive(sched, [sched.submit(Request("yes", context=[v], max_audio_length_ms=2 * 80, temperature=0))])
    assert warm[0].shape[0] == 2
    got = drive(sched, [sched.submit(r)])[0]
    assert sched.stats["prefix_hits"] >= 2  # the request's first prompt and at least one rebuild
    assert torch.equal(got, uncached(small, r))


def test_steady_state_frames_build_no_tensors_from_host_lists(gen, monkeypatch):
    """Per-row state lives in the runner's persistent tensors: a frame where no row joins or
    leaves constructs no tensor from Python data (torch.tensor / as_tensor)."""
    sched = manual(gen, prefix_cache_mb=0)
    streams = [sched.submit(r) for r in reqs(voice(7), 0.9)]
    for r in streams:
        r.seq.pieces[0].frame_budget = r.seq.frames_left = 40
    drive(sched, streams, until=lambda g: all(len(x) >= 2 for x in g))  # all four running
    assert len(sched.running) == 4
    calls = []
    for name in ("tensor", "as_tensor"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _real=real, **k: calls.append(a) or _real(*a, **k))
    slots = [s.seq.slot for s in streams]
    for _ in range(5):
        sched.step()
    assert calls == []
    assert [s.seq.slot for s in streams] == slots


def test_slots_are_stable_when_a_row_leaves(gen):
    """No KV copies: a leaving row frees its slot; the others keep theirs (and their codes)."""
    from echoforge.csm.model import KVCache, Transformer

    assert not hasattr(KVCache, "move") and not hasattr(Transformer, "move_slot")
    sched = manual(gen)
    rs = reqs(voice(8), 0.0)
    rs[0].max_audio_length_ms = 2 * 80  # slot 0 leaves first
    streams = [sched.submit(r) for r in rs]
    first = drive(sched, streams, until=lambda g: len(g[0]) >= 2 and len(g[3]) >= 1)
    assert [s.seq.slot for s in streams[1:]] == [1, 2, 3]  # slot 0 is free, nobody moved into it
    late = sched.submit(Request("yes", context=rs[1].context, max_audio_length_ms=3 * 80, temperature=0))
    rest = drive(sched, [*streams[1:], late])
    assert sched._free == [0, 1, 2, 3] and sched.active == 0
    assert torch.equal(first[0], uncached(gen, rs[0]))
    for i, r in enumerate(rs[1:], 1):
        assert torch.equal(torch.cat([first[i], rest[i - 1]]), uncached(gen, r)), r.text


def test_training_runs_the_inference_forward(gen):
    """The training stack is the inference stack without caches: same hidden states."""
    from echoforge.csm.model import CSM
    from echoforge.train.modeling import CSMForTraining

    assert not hasattr(__import__("echoforge.train.modeling", fromlist=["x"]), "run_stack")
    m = gen.model
    prompt = gen.build_prompt("how are you today", 0, [voice(9, 10)], 5)
    x = m.embed_tokens(prompt.tokens[None], prompt.mask[None])
    t = x.shape[1]
    with torch.inference_mode():
        ref = m.backbone(x, torch.arange(t), None, t)  # with caches (slot 0)
    train = CSM(m.args)
    train.load_state_dict(m.state_dict())
    tm = CSMForTraining(train)
    with torch.no_grad():
        got = tm.csm.backbone(tm.csm.embed_tokens(prompt.tokens[None], prompt.mask[None]), torch.arange(t), None, t)
    assert torch.allclose(got, ref, atol=1e-5)


def test_runtime_modules_call_no_private_members_of_other_objects():
    """prompt / sequence / scheduler / runner / generator / engine talk through public names only."""
    import ast
    from pathlib import Path

    import echoforge.csm as pkg

    root = Path(pkg.__file__).parent
    bad = []
    for name in ("prompt", "sequence", "scheduler", "runner", "prefix_cache", "generator", "engine", "generate"):
        tree = ast.parse((root / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls", "torch"))):  # fmt: skip
                bad.append(f"{name}.py:{node.lineno} .{node.attr}")
    assert bad == []


def test_static_path_with_a_frame_in_flight_and_a_cached_voice_equals_eager_uncached(tiny_csm_dir, gen):
    """The CUDA path's shape (buckets, padding, one frame in flight) with prefix hits, on CPU."""
    static = CSMGenerator.from_pretrained(tiny_csm_dir, device="cpu", max_batch_size=4)
    static.static = True
    v = voice(10)
    rs = reqs(v, 0.9)[:3]
    sched = manual(static, lag=True)
    assert sched.lag and sched.runner.static
    out = drive(sched, [sched.submit(r) for r in rs])
    late = drive(sched, [sched.submit(reqs(v, 0.9)[3])])  # joins alone later: a hit, bucket 1
    assert sched.stats["prefix_hits"] == 3
    for r, got in zip([*rs, reqs(v, 0.9)[3]], [*out, *late], strict=True):
        assert torch.equal(got, uncached(gen, r)), r.text
