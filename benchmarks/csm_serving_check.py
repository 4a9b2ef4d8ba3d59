"""The serving path on one device, measured in one process: every figure the first GPU run needs.

One random-weight CSM (``--size``: tiny / mid on CPU, full csm-1b on CUDA) is built *directly on
the device* (transformers' model constructed there in fp32, converted in memory, cast to the
serving dtype: bf16 on CUDA), with one scheduler of ``max(--streams)`` slots whose static
(on CUDA: compiled, CUDA-graphed) frame step is shared by every section. Sections run in this
order, and each one appends its markdown table to ``--markdown`` and its JSON line to
``--jsonl`` the moment it has them, so a run killed by a time limit keeps what it finished:

1. ``build``    seconds to build the model on the device, parameters, dtype.
2. ``compile``  warm-up (trace + compile + CUDA-graph capture on CUDA) of bucket 1, timed.
3. ``kernels``  aten ops per frame (a dispatch counter on one eager static and one eager sliced
                frame), and which attention kernel ran: profiler names of the SDPA ops and
                device kernels of one static frame (eager) and one compiled frame.
4. ``vs_hf``    ours vs transformers at batch 1 (frames/s, RTF, time to first audio).
5. ``ttfa``     time to first audio with a cloned voice (``--ref-s`` seconds, Mimi codes),
                prefix cache hit vs miss, one request alone (medians of ``--repeats``).
6. ``compile``  the remaining buckets the stream counts need, one by one, each timed; a bucket
                is compiled only if the time measured for the previous one still fits before
                the compile deadline (``--compile-share`` of ``--budget``): the budgets of the
                later sections follow from the measured compile time, and the step is
                restricted to the warmed buckets (nothing compiles while streams are timed).
7. ``streams``  N = ``--streams`` concurrent streams (each ``--frames`` frames, own seed): how many
                stay real time (RTF = stream wall time / its audio seconds < 1), every stream's
                RTF max / p50, TTFA p50 / p95, aggregate frames/s. A count whose bucket is not
                warm, or that would start after the deadline, is skipped (and says so).
8. ``ttfa``     the same cloned voice at batch ``--ttfa-batch`` (N requests at once), cached vs
                uncached (prefix cache disabled for the uncached run): TTFA p50 / p95.
9. ``mimi``     Mimi decode of one ``--mimi-frames`` chunk for ``--mimi-rows`` streams in one call
                (the batcher's slot step): eager, then compiled (on CUDA: CUDA-graphed) for that
                rows bucket, ms per chunk, compile + capture s, and the largest difference of the
                compiled audio from the eager one; one table per row count, eager always, each
                compile only while the last one's measured time (first: a 60-s guess) still fits
                before ``--budget``. ``--mimi-only`` builds just the codec and runs this section.

    .venv/bin/python benchmarks/csm_serving_check.py --device cpu --size tiny --streams 1,8 --frames 8
    python3 benchmarks/csm_serving_check.py --device cuda --size full --budget 380   # device_check.sh
    python3 benchmarks/csm_serving_check.py --device cuda --size full --mimi-only --budget 140
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from csm_speed import PROMPT, SIZES, sync, time_hf, time_ours  # noqa: E402

from echoforge.csm import generate as G  # noqa: E402
from echoforge.csm.generator import CSMGenerator, pick_device, pick_dtype  # noqa: E402
from echoforge.csm.prefix_cache import PrefixCache  # noqa: E402

FRAME_S = 0.08
TEXT = PROMPT[3:]
# Substrings of SDPA op / kernel names that tell which attention implementation ran.
ATTN_KEYS = ("scaled_dot_product", "flash", "fmha", "efficient_attention", "cudnn", "attention", "flex",
             "sdpa", "mha")  # fmt: skip


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _hf_to_ours():
    """(args_from_hf_config, convert_hf_state_dict) wherever this checkout keeps them."""
    try:
        from echoforge.csm.layouts import args_from_hf_config, convert_hf_state_dict
    except ImportError:
        from echoforge.csm.loader import args_from_hf_config, convert_hf_state_dict
    return args_from_hf_config, convert_hf_state_dict


def _init_buffers(model, device) -> None:
    if hasattr(model, "init_buffers"):
        model.init_buffers(device)
    else:  # older checkouts
        from echoforge.csm.loader import _init_buffers as init

        init(model, device)


def hf_config(size: str):
    """transformers' CSM config of a ``csm_speed.SIZES`` size."""
    from transformers import MimiConfig

    from tests.csm.tiny_models import tiny_csm_config, tiny_mimi_config

    (bh, bl, bn, bk, bm), (dh, dl, dn, dk, dm), vocab, codec = SIZES[size]
    depth = dict(hidden_size=dh, num_hidden_layers=dl, num_attention_heads=dn, num_key_value_heads=dk,
                 intermediate_size=dm, backbone_hidden_size=bh, num_codebooks=32, vocab_size=2051,
                 max_position_embeddings=33)  # fmt: skip
    return tiny_csm_config(
        hidden_size=bh, num_hidden_layers=bl, num_attention_heads=bn, num_key_value_heads=bk, intermediate_size=bm,
        text_vocab_size=vocab, depth_decoder_config=depth,
        codec_config=(tiny_mimi_config() if codec == "tiny" else MimiConfig()).to_dict(),
    )  # fmt: skip


def build_on_device(size: str, device: torch.device, dtype: torch.dtype, compile: bool, max_batch: int,
                    static: bool = True, graphs: str = "auto", attention: str = "auto"):  # fmt: skip
    """A random transformers CSM constructed on ``device`` (fp32, nothing built on the host) and our
    generator over the same weights converted in memory and cast to ``dtype`` (Mimi stays fp32).

    Returns ``(hf, gen, n_params)``; ``hf``'s backbone, depth decoder and heads are cast to ``dtype``
    too (for the transformers comparison), its codec stays fp32.
    """
    from transformers import CsmForConditionalGeneration

    from echoforge.csm.loader import Checkpoint
    from echoforge.csm.mimi import MimiCodec
    from echoforge.csm.model import CSM
    from tests.csm.tiny_models import tiny_tokenizer

    args_from_hf_config, convert_hf_state_dict = _hf_to_ours()
    cfg = hf_config(size)
    torch.manual_seed(0)
    with torch.device(device):
        hf = CsmForConditionalGeneration(cfg).eval()
    sd = {k: v for k, v in hf.state_dict().items() if not k.startswith("codec_model.")}
    args = args_from_hf_config(cfg.to_dict())
    with torch.device("meta"):
        model = CSM(args)
    model.load_state_dict(convert_hf_state_dict(sd, args), strict=False, assign=True)
    del sd
    _init_buffers(model, device)  # the meta-built buffers get values (on the device)
    model = model.to(device=device, dtype=dtype).eval()  # a cast on the device (no host copy)
    _init_buffers(model, device)  # the RoPE tables again: fp32 whatever the weights' dtype
    hf.backbone_model.to(dtype), hf.depth_decoder.to(dtype), hf.lm_head.to(dtype), hf.embed_text_tokens.to(dtype)
    ckpt = Checkpoint(model, "transformers", Path("."), tiny_tokenizer(), 0, 1, None, None)
    gen = CSMGenerator(ckpt, MimiCodec(hf.codec_model), device, compile=compile, max_batch_size=max_batch,
                       static_shapes=static, max_waiting=256, batch_decode=True, graphs=graphs,
                       attention=attention)  # fmt: skip
    return hf, gen, sum(p.numel() for p in model.parameters())


class Report:
    """Appends each section's table and JSON line to the output files as soon as it is measured."""

    def __init__(self, markdown: str, jsonl: str, header: str, device: torch.device):
        self.markdown, self.jsonl, self.header, self.device = markdown, jsonl, header, device
        self.started = False

    def emit(self, section: str, title: str, cols: list[str], rows: list[list], data: dict, note: str = "") -> None:
        lines = []
        if not self.started:
            lines += ["", self.header, ""]
            self.started = True
        lines += [f"**{title}**" + (f" — {note}" if note else ""), "", "| " + " | ".join(cols) + " |",
                  "|" + "---|" * len(cols)]  # fmt: skip
        lines += ["| " + " | ".join("-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v) for v in r)
                  + " |" for r in rows]  # fmt: skip
        text = "\n".join(lines) + "\n"
        print(text, flush=True)
        if self.markdown:
            with open(self.markdown, "a") as f:
                f.write(text + "\n")
        line = json.dumps({"benchmark": f"serving_{section}", "device": str(self.device), **_rounded(data)})
        print("json: " + line, flush=True)  # the JSON line goes to --jsonl (not grepped from the log)
        if self.jsonl:
            with open(self.jsonl, "a") as f:
                f.write(line + "\n")


def _rounded(x):
    if isinstance(x, float):
        return round(x, 5)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_rounded(v) for v in x]
    return x


# ---------------------------------------------------------------------- sections


def warm(gen: CSMGenerator, bucket_list: list[int], kmax: int) -> list[dict]:
    """Warm (compile + capture) ``bucket_list`` at top-k bound ``kmax`` on the scheduler's thread."""
    runner = gen.runner
    n0 = len(runner.warm_times)
    gen.scheduler.call(lambda: runner.warmup(buckets=bucket_list, kmax_bounds=[kmax]))
    return runner.warm_times[n0:]


class OpCounter:
    """Counts aten ops dispatched (what eager mode launches; inductor fuses them under compile)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                counter.ops[func.__name__.split(".")[0]] += 1
                return func(*args, **(kwargs or {}))

        self.ops: Counter = Counter()
        self.mode = Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def _eager_frame(gen: CSMGenerator, static: bool) -> None:
    """One sampled frame of bucket 1 through the uncompiled step (static shapes or sliced KV)."""
    r = gen.runner
    sl = slice(0, 1)
    sampler = G.Sampler(r.temperature[sl], r.topk[sl].clamp(min=50), r.key[sl], r.counter[sl], G.KMAX, greedy=False,
                        any_greedy=True)  # fmt: skip
    if static:
        G.frame_step(gen.model, r.h[sl], r.pos[sl], sampler)
    else:
        G.frame_step(gen.model, r.h[sl], r.pos[sl], sampler, int(r.pos[0]) + 1, True)


def _is_kernel(e) -> bool:
    """A device kernel (not a host op whose kernels' time it sums) in a profiler average."""
    return getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA and getattr(e, "device_time_total", 0) > 0


def kernels(gen: CSMGenerator) -> dict:
    """Ops per frame and which attention kernel ran (profiler op + kernel names)."""
    from torch.profiler import ProfilerActivity, profile

    dev = gen.device
    out: dict = {}
    with torch.inference_mode():
        for static in (True, False):
            _eager_frame(gen, static)
            with OpCounter() as c:
                _eager_frame(gen, static)
            out["ops_per_frame_static" if static else "ops_per_frame_sliced"] = c.total
            out["top_ops_static" if static else "top_ops_sliced"] = c.ops.most_common(8)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            _eager_frame(gen, True)
            sync(dev)
    names = [e.key for e in prof.key_averages()]
    out["attention_ops_eager"] = sorted({n for n in names if any(k in n.lower() for k in ATTN_KEYS)})
    if dev.type == "cuda":
        dev_events = [e for e in prof.key_averages() if _is_kernel(e)]
        out["device_kernels_per_frame_eager"] = sum(e.count for e in dev_events)
        out["top_kernels_eager"] = [
            (e.key[:90], e.count) for e in sorted(dev_events, key=lambda e: -e.device_time_total)[:6]
        ]
        if gen.runner.static and not gen.runner.pending:  # the compiled step: graph launches and what is inside

            def one_compiled():
                with profile(activities=acts) as p2:
                    gen.runner.decode(1, None)
                    gen.runner.drain()
                    sync(dev)
                return p2

            p2 = gen.scheduler.call(one_compiled)
            cnames = [e.key for e in p2.key_averages()]
            out["attention_ops_compiled"] = sorted({n for n in cnames if any(k in n.lower() for k in ATTN_KEYS)})
            out["graph_launches_compiled"] = sum(e.count for e in p2.key_averages() if "GraphLaunch" in e.key)
    try:
        out.update(attention_by_length(gen))
    except Exception as exc:  # the rest of the section still reports
        out["attention_by_length_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def attention_by_length(gen: CSMGenerator, rows: int = 8, lengths: tuple[int, ...] = (128, 512, 2048)) -> dict:
    """One backbone attention at bucket ``rows``, every row ``L`` columns long: SDPA over the whole
    window under a mask (the old static path) vs FlexAttention with the per-row-length block mask
    (compiled on CUDA: the fused kernel the serving step runs), µs per call; and the device kernels
    the compiled FlexAttention launched (profiler names)."""
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import flex_attention
    from torch.profiler import ProfilerActivity, profile

    a, dev, dt_ = gen.model.args.backbone, gen.device, gen.dtype
    s = a.max_seq_len
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(rows, a.n_head, 1, a.head_dim, device=dev, dtype=dt_, generator=g)
    k = torch.randn(rows, a.n_local_heads, s, a.head_dim, device=dev, dtype=dt_, generator=g)
    v = torch.randn(rows, a.n_local_heads, s, a.head_dim, device=dev, dtype=dt_, generator=g)
    pos = torch.zeros(rows, dtype=torch.long, device=dev)
    mod = G.length_mask_mod(pos)
    flex = torch.compile(flex_attention, dynamic=False) if dev.type == "cuda" else flex_attention

    def timed(fn, n=20) -> float:
        fn()
        sync(dev)
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            sync(dev)
            ts.append(time.perf_counter() - t0)
        return 1e6 * statistics.median(ts)

    res = {}
    with torch.inference_mode():
        for length in lengths:
            pos.fill_(min(length, s) - 1)
            mask = (torch.arange(s, device=dev)[None, :] <= pos[:, None])[:, None, None, :]
            bm = G.length_block_mask(pos, s, mod)
            res[f"sdpa_masked_us_L{length}"] = timed(
                lambda m=mask: F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True)
            )
            res[f"flex_us_L{length}"] = timed(lambda b=bm: flex(q, k, v, block_mask=b, enable_gqa=True))
        if dev.type == "cuda":
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                flex(q, k, v, block_mask=bm, enable_gqa=True)
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
                sync(dev)
            res["attention_kernels"] = sorted({e.key[:100] for e in prof.key_averages()
                                               if _is_kernel(e)})  # fmt: skip
    res["attention_flex_compiled"] = dev.type == "cuda"
    return res


def vs_hf(hf, gen: CSMGenerator, frames: int) -> dict:
    dev = gen.device
    ours = time_ours(gen, 1, frames, dev, 1)
    theirs = time_hf(hf, gen, 1, frames, dev, 1)
    return dict(frames=frames, ours_fps=ours["frames"] / ours["seconds"], hf_fps=theirs["frames"] / theirs["seconds"],
                ours_rtf=ours["seconds"] / (ours["frames"] * FRAME_S), hf_rtf=theirs["seconds"] / (theirs["frames"] * FRAME_S),
                ours_ttfa_ms=1000 * ours["ttfa_s"], hf_ttfa_ms=None if theirs["ttfa_s"] is None else 1000 * theirs["ttfa_s"],
                speedup=(ours["frames"] / ours["seconds"]) / (theirs["frames"] / theirs["seconds"]))  # fmt: skip


def _idle(gen: CSMGenerator) -> None:
    while gen.scheduler.active or gen.scheduler.waiting:
        time.sleep(0.001)


def ttfa_batch(gen: CSMGenerator, v, n: int, cached: bool, frames: int = 4) -> list[float]:
    """Time to first audio of ``n`` requests with voice ``v`` started together; cache hit or disabled."""
    runner = gen.runner
    kept = runner.prefix_cache
    if cached:
        _ttfa_one(gen, v, 0, frames)  # the voice's KV is in the cache
    else:
        runner.prefix_cache = PrefixCache(0)
    try:
        barrier = threading.Barrier(n)
        got: list[float | None] = [None] * n
        errors: list[str] = []

        def one(i: int) -> None:
            try:
                barrier.wait()
                got[i] = _ttfa_one(gen, v, i, frames, wait=False)
            except BaseException as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(errors[0])
        _idle(gen)
        return [x for x in got if x is not None]
    finally:
        runner.prefix_cache = kept


def _ttfa_one(gen: CSMGenerator, v, seed: int, frames: int, wait: bool = True) -> float:
    t0 = time.perf_counter()
    it = gen.stream(TEXT, context=[v], max_audio_length_ms=frames * 80, temperature=0.9, topk=50, seed=seed,
                    first_chunk_frames=2, chunk_frames=8)  # fmt: skip
    next(it)
    sync(gen.device)
    t = time.perf_counter() - t0
    it.close()
    if wait:
        _idle(gen)
    return t


def ttfa_solo(gen: CSMGenerator, v, repeats: int) -> dict:
    cache = gen.runner.prefix_cache
    _ttfa_one(gen, v, 0, 4)  # warm-up
    hit, miss = [], []
    for i in range(repeats):
        cache.clear()
        miss.append(_ttfa_one(gen, v, i, 4))
        hit.append(_ttfa_one(gen, v, i, 4))
    return dict(batch=1, ref_frames=int(v.audio.shape[0]), repeats=repeats, uncached_ms=1000 * statistics.median(miss),
                cached_ms=1000 * statistics.median(hit), ratio=statistics.median(hit) / statistics.median(miss))  # fmt: skip


def streams_run(gen: CSMGenerator, n: int, frames: int) -> dict:
    barrier = threading.Barrier(n)
    outs: list[dict] = [{} for _ in range(n)]

    def one(i: int) -> None:
        try:
            barrier.wait()
            t0 = time.perf_counter()
            first, samples = None, 0
            for chunk in gen.stream(TEXT, speaker=0, max_audio_length_ms=frames * 80, temperature=0.9, topk=50,
                                    seed=i, first_chunk_frames=2, chunk_frames=8):  # fmt: skip
                if first is None:
                    sync(gen.device)
                    first = time.perf_counter() - t0
                samples += chunk.numel()
            sync(gen.device)
            outs[i].update(start=t0, end=time.perf_counter(), ttfa=first, samples=samples)
        except BaseException as exc:
            outs[i]["error"] = f"{type(exc).__name__}: {exc}"

    f0 = gen.scheduler.stats["frames"]
    mimi0 = dict(gen.mimi_batcher.stats) if gen.mimi_batcher is not None else None
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [o["error"] for o in outs if "error" in o]
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} streams failed: {errors[0]}")
    _idle(gen)
    made = gen.scheduler.stats["frames"] - f0
    wall = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    rtf = [(o["end"] - o["start"]) / (frames * FRAME_S) for o in outs]
    ttfa = [o["ttfa"] for o in outs]
    mimi = None  # Mimi chunks decoded and batched calls made (None: each stream decoded alone)
    if mimi0 is not None:
        mimi = {k: gen.mimi_batcher.stats[k] - mimi0[k] for k in ("chunks", "calls")}
    return dict(streams=n, frames=frames, total_frames=made, wall_s=wall, agg_fps=made / wall, mimi=mimi,
                realtime=sum(r < 1 for r in rtf), all_realtime=max(rtf) < 1, rtf_max=max(rtf), rtf_p50=pct(rtf, 0.5),
                ttfa_p50_ms=1000 * pct(ttfa, 0.5), ttfa_p95_ms=1000 * pct(ttfa, 0.95),
                bucket=gen.runner.rows_for(n))  # fmt: skip


def build_codec(size: str, device: torch.device):
    """A random Mimi of ``size``'s codec (tiny or the real one) built on ``device``, fp32, random codebooks."""
    from transformers import MimiConfig, MimiModel

    from echoforge.csm.mimi import MimiCodec
    from echoforge.csm.tiny import randomize_mimi_codebooks, tiny_mimi_config

    torch.manual_seed(0)
    with torch.device(device):
        model = MimiModel(tiny_mimi_config() if SIZES[size][3] == "tiny" else MimiConfig()).eval()
    with torch.no_grad():
        randomize_mimi_codebooks(model, torch.Generator().manual_seed(0))
    return MimiCodec(model)


def _mimi_rounds(batcher, codes: torch.Tensor) -> tuple[float, torch.Tensor]:
    """``codes [rounds, rows, frames, K]``: ``rows`` fresh streams decode one chunk each per round, queued
    together (one call a round). Median ms of a round (the first left out), and the audio ``[rows, T]``."""
    decs = [batcher.decoder() for _ in range(codes.shape[1])]
    times, audio = [], []
    for rnd in codes:
        with batcher.paused():
            futs = [batcher.submit(d, c) for d, c in zip(decs, rnd, strict=True)]
            t0 = time.perf_counter()
        audio.append(torch.stack([f.result() for f in futs]))
        times.append(time.perf_counter() - t0)
    for d in decs:
        d.close()
    return 1000 * statistics.median(times[1:]), torch.cat(audio, dim=1)


def mimi_decode(rep: Report, codec, rows_list: list[int], compile: bool, frames: int, reps: int,
                deadline: float) -> list[dict]:  # fmt: skip
    """Section ``mimi``: one chunk of ``frames`` frames for each of ``rows_list`` streams in one call, eager
    and compiled (a batcher of its own, ``max_rows = max(rows_list)``: the same buckets as serving's)."""
    from echoforge.csm.mimi_batch import MimiBatcher
    from echoforge.csm.runner import bucket_for

    top = max(rows_list)
    batcher = MimiBatcher(codec, max_rows=top, compile=compile, chunk_frames=(frames,))
    gen = torch.Generator().manual_seed(0)
    cols = ["rows", "bucket", "eager ms/chunk", "compiled ms/chunk", "eager / compiled", "compile + capture s",
            "max abs diff (peak)", "note"]  # fmt: skip
    out, est = [], 60.0  # seconds of the next compile: a guess, then the last one measured
    try:
        for r in rows_list:
            codes = torch.randint(0, codec.codebook_size, (reps + 1, r, frames, codec.num_codebooks), generator=gen)
            eager_ms, eager = _mimi_rounds(batcher, codes)  # the shape is not warm yet: the eager step
            row = dict(rows=r, frames=frames, bucket=bucket_for(r, top), eager_ms=eager_ms, compiled_ms=None,
                       speedup=None, compile_s=None, max_abs_diff=None, peak=float(eager.abs().max()), note="")  # fmt: skip
            if not compile:
                row["note"] = "not compiled: eager only"
            elif batcher.compile_error:
                row["note"] = "compile failed earlier"
            elif time.perf_counter() + 1.5 * est > deadline:
                row["note"] = "compile skipped: time budget"
            else:
                est = row["compile_s"] = batcher.warmup(buckets=[row["bucket"]], chunk_frames=[frames])
                if batcher.compile_error:
                    row["note"] = f"compile failed: {batcher.compile_error[:200]}"
                else:
                    ms, audio = _mimi_rounds(batcher, codes)
                    row.update(compiled_ms=ms, speedup=eager_ms / ms, max_abs_diff=float((audio - eager).abs().max()))
            diff = None if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.2g} ({row['peak']:.3g})"
            rep.emit("mimi", f"Mimi decode, one {frames}-frame chunk for {r} streams in one call", cols,
                     [[r, row["bucket"], eager_ms, row["compiled_ms"], row["speedup"], row["compile_s"], diff,
                       row["note"] or "-"]], row)  # fmt: skip
            out.append(row)
    finally:
        batcher.close()
    return out


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", choices=sorted(SIZES))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--streams", default="1,8,32,64")
    ap.add_argument("--frames", type=int, default=48, help="frames per stream in the streams runs")
    ap.add_argument("--hf-frames", type=int, default=24, help="frames of the ours-vs-transformers run (batch 1)")
    ap.add_argument("--ttfa-batch", type=int, default=16)
    ap.add_argument("--ref-s", type=float, default=10.0, help="seconds of the cloned voice's reference clip")
    ap.add_argument("--repeats", type=int, default=3, help="TTFA runs per case (medians)")
    ap.add_argument("--budget", type=float, default=0, help="seconds for the whole run (0: no limit)")
    ap.add_argument("--compile-share", type=float, default=0.55,
                    help="buckets beyond 1 are compiled only before this share of --budget is spent")  # fmt: skip
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--graphs", default="codebook", choices=["codebook", "frame", "auto"],
                    help="the static step as three graphs (codebook step replayed) or one per frame; on CPU "
                         "uncompiled, the same orchestration")  # fmt: skip
    ap.add_argument("--attention", default="flex", choices=["flex", "sdpa", "auto"],
                    help="the static step's backbone attention (flex: per-row-length block mask)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--mimi-rows", default="1,8,32", help="streams per Mimi decode call ('' skips the section)")
    ap.add_argument("--mimi-frames", type=int, default=8, help="frames of the Mimi chunk (the server's chunk_frames)")
    ap.add_argument("--mimi-reps", type=int, default=5, help="timed Mimi calls per case (median)")
    ap.add_argument("--mimi-only", action="store_true", help="build only the codec and run the mimi section")
    ap.add_argument("--mimi-compile", action="store_true", help="compile the Mimi step on CPU too (inductor)")
    ap.add_argument("--markdown", default="", help="file to append the tables to")
    ap.add_argument("--jsonl", default="", help="file to append the JSON lines to")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    deadline = t_start + a.budget if a.budget else float("inf")
    compile_deadline = t_start + a.compile_share * a.budget if a.budget else float("inf")
    device = pick_device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = pick_dtype(device, a.dtype)
    streams = [int(x) for x in a.streams.split(",")]
    max_rows = max(streams + [a.ttfa_batch])
    compile = device.type == "cuda" and not a.no_compile
    machine = (torch.cuda.get_device_name() if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads")  # fmt: skip
    header = (f"## CSM serving check — {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
              f"`benchmarks/csm_serving_check.py --size {a.size} --device {a.device} --streams {a.streams} "
              f"--frames {a.frames} --hf-frames {a.hf_frames} --ttfa-batch {a.ttfa_batch} --ref-s {a.ref_s:g} "
              f"--repeats {a.repeats} --budget {a.budget:g} --graphs {a.graphs} --attention {a.attention}` on {machine}; {str(dtype).replace('torch.', '')}; "
              f"torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}; random weights; "
              f"{'compiled (CUDA graphs)' if compile else 'static shapes, eager'} frame step, one scheduler of "
              f"{max_rows} slots shared by every section; sampling T=0.9, top-k 50.")  # fmt: skip
    mimi_rows = [int(x) for x in a.mimi_rows.split(",") if x.strip()]
    mimi_compile = compile or (a.mimi_compile and not a.no_compile)
    if a.mimi_only:
        header = (f"## Mimi decode check — {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
                  f"`benchmarks/csm_serving_check.py --mimi-only --size {a.size} --device {a.device} --mimi-rows "
                  f"{a.mimi_rows} --mimi-frames {a.mimi_frames} --mimi-reps {a.mimi_reps} --budget {a.budget:g}"
                  f"{' --mimi-compile' if a.mimi_compile else ''}` on "
                  f"{machine}; torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}; random Mimi "
                  f"({'tiny' if SIZES[a.size][3] == 'tiny' else 'real size'}), fp32; the batcher's slot step, eager vs "
                  f"{'compiled (CUDA graphs)' if compile else 'compiled (inductor)' if mimi_compile else 'not compiled'}.")  # fmt: skip
        rep = Report(a.markdown, a.jsonl, header, device)
        mimi_decode(rep, build_codec(a.size, device), mimi_rows, mimi_compile, a.mimi_frames, a.mimi_reps, deadline)
        print(f"mimi check: {time.perf_counter() - t_start:.1f} s")
        return 0
    rep = Report(a.markdown, a.jsonl, header, device)
    failed: list[str] = []

    def section(name: str, fn) -> None:
        try:
            fn()
        except Exception as exc:  # report and go on: later sections may still bring figures back
            traceback.print_exc()
            failed.append(name)
            rep.emit(name, f"{name}: FAILED", ["error"], [[f"{type(exc).__name__}: {exc}"[:300]]],
                     {"error": f"{type(exc).__name__}: {exc}"[:1000]})  # fmt: skip

    t0 = time.perf_counter()
    hf, gen, n_params = build_on_device(a.size, device, dtype, compile, max_rows, graphs=a.graphs,
                                        attention=a.attention)  # fmt: skip
    sync(device)
    build_s = time.perf_counter() - t0
    rep.emit("build", "build on the device", ["size", "params (M)", "dtype", "device", "seconds"],
             [[a.size, round(n_params / 1e6, 1), str(dtype), str(device), build_s]],
             dict(size=a.size, params_m=n_params / 1e6, dtype=str(dtype), build_s=build_s,
                  peak_gib=torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None))  # fmt: skip
    runner = gen.runner
    kmax = min(G.KMAX, gen.model.args.audio_vocab_size)

    def compile_rows(times: list[dict]) -> list[list]:
        return [[t["bucket"], t["kmax"], t["first_s"], t["capture_s"]] for t in times]

    def compile_one() -> None:
        fallback = None
        try:
            times = warm(gen, [1], kmax)
        except Exception as exc:
            if not (runner.use_compile and runner.graphs == "codebook"):
                runner.step_fn, runner.static = G.frame_step, False  # the later sections measure the eager step
                raise
            traceback.print_exc()  # the three-graph step failed: try the frame traced whole
            fallback = f"codebook graphs failed ({type(exc).__name__}: {str(exc)[:200]}); frame graph"
            runner.graphs = "frame"
            runner.step_fn = torch.compile(G.frame_step, mode="reduce-overhead", fullgraph=True, dynamic=False)
            try:
                times = warm(gen, [1], kmax)
            except Exception:
                runner.step_fn, runner.static = G.frame_step, False
                raise
        runner.buckets = [1]
        rep.emit("compile", f"compile + capture, bucket 1 ({runner.graphs} graphs)", ["bucket", "top-k bound",
                 "first call s", "capture s"], compile_rows(times), dict(phase="bucket1", compiled=compile,
                 graphs=runner.graphs, fallback=fallback, buckets=times))  # fmt: skip

    section("compile", compile_one)
    cols = ["metric", "value"]
    kern: dict = {}

    def do_kernels() -> None:
        kern.update(kernels(gen))
        rows = [[k, v if not isinstance(v, list) else "; ".join(map(str, v))[:400]] for k, v in kern.items()]
        rep.emit("kernels", "ops per frame and attention kernels", cols, rows, kern)

    section("kernels", do_kernels)

    def do_vs_hf() -> None:
        r = vs_hf(hf, gen, a.hf_frames)
        rep.emit("vs_hf", "ours vs transformers, batch 1", ["frames", "ours fps", "hf fps", "speed-up", "ours RTF",
                 "hf RTF", "ours TTFA ms", "hf TTFA ms"], [[r["frames"], r["ours_fps"], r["hf_fps"], r["speedup"],
                 r["ours_rtf"], r["hf_rtf"], r["ours_ttfa_ms"], r["hf_ttfa_ms"]]], r)  # fmt: skip

    section("vs_hf", do_vs_hf)
    hf = None  # transformers is done: its backbone and depth decoder can go (gen keeps the codec)
    from csm_prefix_cache import voice

    v = voice(a.ref_s)

    def do_ttfa1() -> None:
        r = ttfa_solo(gen, v, a.repeats)
        rep.emit("ttfa", f"TTFA with a cloned voice ({a.ref_s:g} s), batch 1", ["batch", "uncached ms", "cached ms",
                 "cached / uncached"], [[1, r["uncached_ms"], r["cached_ms"], r["ratio"]]], r)  # fmt: skip

    section("ttfa", do_ttfa1)

    from echoforge.csm.runner import bucket_for, buckets

    need = sorted({bucket_for(n, max_rows) for n in streams + [a.ttfa_batch]} - {1})
    warmed: list[dict] = []

    def compile_rest() -> None:
        last = max((t["first_s"] + t["capture_s"] for t in runner.warm_times), default=0.0)
        skipped = []
        for b in need:
            if time.perf_counter() + 1.2 * last > compile_deadline:
                skipped.append(b)
                continue
            t = warm(gen, [b], kmax)
            warmed.extend(t)
            last = t[0]["first_s"] + t[0]["capture_s"]
            runner.buckets = sorted({1, *[w["bucket"] for w in warmed]})
        # What serving's warm-up (every bucket, both top-k bounds) would take: measured buckets as
        # measured, the others as the nearest measured one.
        per = {t["bucket"]: t["first_s"] + t["capture_s"] for t in runner.warm_times if t["kmax"] == kmax}
        all_b = buckets(max_rows)
        est = sum(per.get(b, per[min(per, key=lambda m: abs(m - b))]) for b in all_b) * len(runner.kmax_bounds())
        rep.emit("compile", "compile + capture, the buckets the stream counts need", ["bucket", "top-k bound",
                 "first call s", "capture s"], compile_rows(warmed) + [[b, kmax, "skipped (budget)", "-"] for b in skipped]
                 + [[f"serving warm-up estimate ({len(all_b)} buckets x {len(runner.kmax_bounds())} top-k bounds)",
                     "-", est, "-"]],
                 dict(phase="rest", compiled=compile, graphs=runner.graphs, buckets=warmed, skipped=skipped,
                      warm_buckets=runner.buckets, serving_warmup_estimate_s=est))  # fmt: skip

    section("compile", compile_rest)

    static = runner.static

    def warm_for(n: int) -> bool:
        """Whether ``n`` rows run on a warmed (compiled) bucket; if not, the step runs eager for them."""
        b = runner.rows_for(n) if static else n
        runner.static = static and b in runner.buckets and b >= n
        return runner.static or not static

    def do_streams() -> None:
        rows, data = [], []
        per_frame = None
        for n in streams:
            est = 0.0 if per_frame is None else per_frame * a.frames * 1.5
            if time.perf_counter() + est > deadline:
                rows.append([n, "-", "-", "-", "-", "-", "-", "-", "skipped: time budget"])
                data.append(dict(streams=n, skipped="time budget"))
                continue
            path = "static" if warm_for(n) else "eager (bucket not compiled within the budget)"
            try:
                r = streams_run(gen, n, a.frames)
            finally:
                runner.static = static
            r["path"] = path
            per_frame = r["wall_s"] / a.frames
            rows.append([n, r["bucket"] if path == "static" else "eager", f"{r['realtime']}/{n}", r["rtf_max"],
                         r["rtf_p50"], r["ttfa_p50_ms"], r["ttfa_p95_ms"], r["agg_fps"],
                         "all real time" if r["all_realtime"] else "NOT all real time"])  # fmt: skip
            data.append(r)
            print(f"{n} streams: {r['realtime']}/{n} real time, RTF max {r['rtf_max']:.2f}", flush=True)
        rep.emit("streams", f"streams at real time ({a.frames} frames each)", ["streams", "bucket", "RTF < 1",
                 "RTF max", "RTF p50", "TTFA p50 ms", "TTFA p95 ms", "agg fps", "verdict"], rows, dict(rows=data))  # fmt: skip

    section("streams", do_streams)

    def do_ttfa_n() -> None:
        n = a.ttfa_batch
        if time.perf_counter() > deadline:
            rep.emit("ttfa", f"TTFA with a cloned voice, batch {n}", ["batch", "note"], [[n, "skipped: time budget"]],
                     dict(batch=n, skipped="time budget"))  # fmt: skip
            return
        path = "static" if warm_for(n) else "eager (bucket not compiled within the budget)"
        try:
            miss = ttfa_batch(gen, v, n, cached=False)
            hit = ttfa_batch(gen, v, n, cached=True)
        finally:
            runner.static = static
        r = dict(batch=n, path=path, uncached_p50_ms=1000 * pct(miss, 0.5), uncached_p95_ms=1000 * pct(miss, 0.95),
                 cached_p50_ms=1000 * pct(hit, 0.5), cached_p95_ms=1000 * pct(hit, 0.95))  # fmt: skip
        r["ratio_p50"] = r["cached_p50_ms"] / r["uncached_p50_ms"]
        rep.emit("ttfa", f"TTFA with a cloned voice ({a.ref_s:g} s), batch {n} started together ({path})", ["batch",
                 "uncached p50 ms", "uncached p95 ms", "cached p50 ms", "cached p95 ms", "cached / uncached p50"],
                 [[n, r["uncached_p50_ms"], r["uncached_p95_ms"], r["cached_p50_ms"], r["cached_p95_ms"],
                   r["ratio_p50"]]], r)  # fmt: skip

    section("ttfa", do_ttfa_n)

    def do_mimi() -> None:
        mimi_decode(rep, gen.codec, mimi_rows, mimi_compile, a.mimi_frames, a.mimi_reps, deadline)

    if mimi_rows:
        section("mimi", do_mimi)

    def compile_big_topk() -> None:
        """Bucket 1 at the other top-k bound (the whole vocabulary), if the time measured for the
        256 bound still fits: what the second half of serving's warm-up costs."""
        big = max(runner.kmax_bounds())
        first = next((t["first_s"] + t["capture_s"] for t in runner.warm_times if t["bucket"] == 1), 0.0)
        if big == kmax or time.perf_counter() + 1.5 * first > deadline:
            rep.emit("compile", f"compile + capture, bucket 1, top-k bound {big}", ["bucket", "note"],
                     [[1, "skipped: time budget" if big != kmax else "one bound only"]],
                     dict(phase="topk_bound", skipped=True))  # fmt: skip
            return
        t = warm(gen, [1], big)
        rep.emit("compile", f"compile + capture, bucket 1, top-k bound {big}", ["bucket", "top-k bound",
                 "first call s", "capture s"], compile_rows(t), dict(phase="topk_bound", buckets=t))  # fmt: skip

    section("compile", compile_big_topk)
    gen.scheduler.close()
    print(f"serving check: {time.perf_counter() - t_start:.1f} s" + (f"; FAILED sections: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
