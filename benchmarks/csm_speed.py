"""CSM speed: our engine vs transformers ``generate`` on the same random weights, in one process.

For each size (tiny / mid / full csm-1b) and batch size it builds one random
``CsmForConditionalGeneration``, converts its weights into our model (no disk round-trip),
warms both up, then times ``--frames`` frames of top-k sampling (temperature 0.9, k 50):

* frames/s (all rows), real-time factor (seconds of compute per second of audio, per row),
* time to first audio (ours: first streamed chunk of 2 frames incl. Mimi decode; transformers
  cannot stream, so: its 2nd frame via a streamer plus decoding those 2 frames),
* peak extra memory during generation (CUDA: max allocated; CPU: peak RSS above the pre-run level),
  and on CUDA the total peak (weights + caches + activations) in GiB.

Implementations (``--impls``): ``ours`` (on CUDA the compiled, CUDA-graphed frame step unless
``--no-compile``), ``eager`` (ours without compile: a copy of the same weights; CUDA only by
default) and ``hf`` (transformers). Default: ``ours,hf`` on CPU, ``ours,eager,hf`` on CUDA.

Prints a table, appends a section to BENCHMARKS.md and ends with one JSON line.

    .venv/bin/python benchmarks/csm_speed.py --sizes tiny,mid --frames 32
    .venv/bin/python benchmarks/csm_speed.py --sizes full --frames 6 --batches 1
    python3 benchmarks/csm_speed.py --device cuda --sizes full --full-frames 64 --batches 1,8   # GPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echoforge.csm.generator import CSMGenerator, pick_device, pick_dtype  # noqa: E402
from echoforge.csm.layouts import args_from_hf_config, convert_hf_state_dict  # noqa: E402
from echoforge.csm.loader import Checkpoint  # noqa: E402
from echoforge.csm.mimi import MimiCodec  # noqa: E402
from echoforge.csm.model import CSM  # noqa: E402
from tests.csm.tiny_models import tiny_csm_config, tiny_mimi_config, tiny_tokenizer  # noqa: E402

# (hidden, layers, heads, kv heads, mlp) for backbone and depth decoder, text vocab, codec.
SIZES = {
    "tiny": ((64, 2, 4, 2, 128), (32, 2, 4, 2, 64), 128, "tiny"),
    "mid": ((512, 6, 8, 2, 2048), (256, 4, 4, 2, 1024), 128_256, "tiny"),
    "full": ((2048, 16, 32, 8, 8192), (1024, 4, 8, 2, 8192), 128_256, "full"),
}
PROMPT = "[0]hello world how are you today i am fine thanks this is a test of speech synthesis"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class PeakMemory:
    """Peak extra memory while the block runs (CUDA allocator, or sampled RSS on CPU)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb, self.total_gib = device, 0.0, None

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base, self.peak, self.stop = self._rss(), self._rss(), False
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    def _poll(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
            self.total_gib = torch.cuda.max_memory_allocated() / 2**30
        else:
            self.stop = True
            self.thread.join()
            self.peak_mb = (self.peak - self.base) / 2**20


def build(size: str, device: torch.device, dtype: torch.dtype, compile: bool, max_batch: int):
    """Random transformers CSM + our generator sharing its weights (converted in memory)."""
    from transformers import CsmForConditionalGeneration, MimiConfig

    (bh, bl, bn, bk, bm), (dh, dl, dn, dk, dm), vocab, codec = SIZES[size]
    depth = dict(hidden_size=dh, num_hidden_layers=dl, num_attention_heads=dn, num_key_value_heads=dk,
                 intermediate_size=dm, backbone_hidden_size=bh, num_codebooks=32, vocab_size=2051,
                 max_position_embeddings=33)  # fmt: skip
    cfg = tiny_csm_config(
        hidden_size=bh, num_hidden_layers=bl, num_attention_heads=bn, num_key_value_heads=bk, intermediate_size=bm,
        text_vocab_size=vocab, depth_decoder_config=depth,
        codec_config=(tiny_mimi_config() if codec == "tiny" else MimiConfig()).to_dict(),
    )  # fmt: skip
    torch.manual_seed(0)
    hf = CsmForConditionalGeneration(cfg).eval()
    sd = {k: v for k, v in hf.state_dict().items() if not k.startswith("codec_model.")}
    args = args_from_hf_config(cfg.to_dict())
    with torch.device("meta"):
        model = CSM(args)
    model.load_state_dict(convert_hf_state_dict(sd, args), strict=False, assign=True)
    del sd
    model.init_buffers("cpu")
    model = model.to(device=device, dtype=dtype).eval()
    model.init_buffers(device)
    hf = hf.to(device)
    hf.backbone_model.to(dtype), hf.depth_decoder.to(dtype), hf.lm_head.to(dtype), hf.embed_text_tokens.to(dtype)
    tok = tiny_tokenizer()
    ckpt = Checkpoint(model, "transformers", Path("."), tok, 0, 1, None, None)
    gen = CSMGenerator(ckpt, MimiCodec(hf.codec_model), device, compile=compile, max_batch_size=max_batch)
    n_params = sum(p.numel() for p in model.parameters())
    return hf, gen, n_params


def time_ours(gen: CSMGenerator, batch: int, frames: int, device: torch.device, repeats: int) -> dict:
    reqs = [
        dict(text=PROMPT[3:], speaker=0, max_audio_length_ms=frames * 80, temperature=0.9, topk=50, seed=i)
        for i in range(batch)
    ]
    gen.generate_batch([dict(r, max_audio_length_ms=3 * 80) for r in reqs], decode=False)  # warm-up
    sync(device)
    elapsed, ttfa = float("inf"), None
    for _ in range(repeats):  # best of N: the shared CPU's load varies a lot between runs
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            out = gen.generate_batch(reqs, decode=False) if batch > 1 else [gen.generate_codes(**reqs[0])]
            sync(device)
            elapsed = min(elapsed, time.perf_counter() - t0)
        if batch == 1:
            t0 = time.perf_counter()
            it = gen.stream(**reqs[0], first_chunk_frames=2, chunk_frames=8)
            next(it)
            sync(device)
            ttfa = min(ttfa or float("inf"), time.perf_counter() - t0)
            it.close()
    n = sum(o.shape[0] for o in out)
    return dict(frames=n, seconds=elapsed, ttfa_s=ttfa, peak_mb=mem.peak_mb, total_gib=mem.total_gib)


def eager_copy(gen: CSMGenerator, max_batch: int) -> CSMGenerator:
    """Our engine without compile, on a copy of the weights (the compiled one keeps its graphs)."""
    import copy

    ckpt = copy.copy(gen.ckpt)
    ckpt.model = copy.deepcopy(gen.model)
    return CSMGenerator(ckpt, gen.codec, gen.device, compile=False, max_batch_size=max_batch)


class _FrameClock:
    """transformers streamer: remembers when each frame arrived (the first put is the prompt)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def time_hf(hf, gen: CSMGenerator, batch: int, frames: int, device: torch.device, repeats: int) -> dict:
    ids = [0, *gen.ckpt.tokenizer.encode(PROMPT, add_special_tokens=False).ids, 1]
    input_ids = torch.tensor([ids] * batch, device=device)
    kw = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True, temperature=0.9, top_k=50,
              depth_decoder_do_sample=True, depth_decoder_temperature=0.9, depth_decoder_top_k=50)  # fmt: skip
    with torch.inference_mode():
        hf.generate(**kw, max_new_tokens=3)  # warm-up
        sync(device)
        elapsed, ttfa = float("inf"), None
        for _ in range(repeats):
            clock = _FrameClock()
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                out = hf.generate(**kw, max_new_tokens=frames, streamer=clock if batch == 1 else None)
                sync(device)
                elapsed = min(elapsed, time.perf_counter() - t0)
            if batch == 1 and len(clock.times) >= 3:
                t1 = time.perf_counter()
                hf.codec_model.decode(out[:1, :2].clamp(0, 2047).transpose(1, 2))
                sync(device)
                ttfa = min(ttfa or float("inf"), clock.times[2] - t0 + time.perf_counter() - t1)
    return dict(
        frames=int(out.shape[0] * out.shape[1]),
        seconds=elapsed,
        ttfa_s=ttfa,
        peak_mb=mem.peak_mb,
        total_gib=mem.total_gib,
    )


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,mid", help="comma list of tiny,mid,full")
    ap.add_argument("--frames", type=int, default=32, help="frames per row (80 ms each)")
    ap.add_argument("--full-frames", type=int, default=6, help="frames per row for the full size")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument(
        "--repeats", type=int, default=3, help="timed runs per measurement, best kept (full size: at most 2)"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--no-compile", action="store_true", help="CUDA: skip torch.compile of the frame step")
    ap.add_argument(
        "--impls", default="auto", help="comma list of ours,eager,hf (auto: ours,hf on CPU, ours,eager,hf on CUDA)"
    )
    ap.add_argument(
        "--dtype", default="auto", help="auto (bf16 on CUDA, fp32 elsewhere), exact, bfloat16, float16, float32"
    )
    ap.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"), help="file to append to ('' to skip)")
    ap.add_argument("--json", default="", help="also write the JSON line to this file")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    dtype = pick_dtype(device, a.dtype)
    impls = (
        (["ours", "eager", "hf"] if device.type == "cuda" else ["ours", "hf"])
        if a.impls == "auto"
        else a.impls.split(",")
    )
    if "ours" not in impls or "hf" not in impls or not set(impls) <= {"ours", "eager", "hf"}:
        ap.error("--impls needs ours and hf (eager optional)")
    a.impls = ",".join(impls)
    batches = [int(b) for b in a.batches.split(",")]
    rows = []
    for size in a.sizes.split(","):
        frames = a.full_frames if size == "full" else a.frames
        hf, gen, n_params = build(size, device, dtype, device.type == "cuda" and not a.no_compile, max(batches))
        gens = {"ours": gen}
        if "eager" in impls:
            gens["eager"] = eager_copy(gen, max(batches))
        for b in batches:
            reps = min(2, a.repeats) if size == "full" else a.repeats
            # Alternate ours / transformers runs and keep each one's best, so load drift on the
            # shared machine does not favour whichever implementation happened to run first.
            best: dict[str, dict] = {}
            for _ in range(reps):
                for name in impls:
                    r = (
                        time_hf(hf, gen, b, frames, device, 1)
                        if name == "hf"
                        else time_ours(gens[name], b, frames, device, 1)
                    )
                    p = best.get(name)
                    best[name] = r if p is None else dict(
                        frames=r["frames"], seconds=min(p["seconds"], r["seconds"]),
                        ttfa_s=None if r["ttfa_s"] is None else min(p["ttfa_s"], r["ttfa_s"]),
                        peak_mb=max(p["peak_mb"], r["peak_mb"]),
                        total_gib=None if r["total_gib"] is None else max(p["total_gib"], r["total_gib"]),
                    )  # fmt: skip
            row = dict(size=size, params_m=round(n_params / 1e6, 1), batch=b, frames=frames)
            for name in impls:
                r = best[name]
                row[f"{name}_fps"] = r["frames"] / r["seconds"]
                row[f"{name}_rtf"] = r["seconds"] / (r["frames"] / b * 0.08)
                row[f"{name}_ttfa_ms"] = None if r["ttfa_s"] is None else r["ttfa_s"] * 1000
                row[f"{name}_peak_mb"] = r["peak_mb"]
                if r["total_gib"] is not None:
                    row[f"{name}_peak_gib"] = r["total_gib"]
            row["speedup"] = row["ours_fps"] / row["hf_fps"]
            if "eager" in impls:
                row["compile_speedup"] = row["ours_fps"] / row["eager_fps"]
            rows.append(row)
            print(
                f"{size} b={b}: ours {row['ours_fps']:.1f} fps, transformers {row['hf_fps']:.1f} fps ({row['speedup']:.2f}x)"
                + (f", eager {row['eager_fps']:.1f} fps" if "eager" in impls else ""),
                flush=True,
            )
        del hf, gen, gens
    table = render(rows, device, dtype, a)
    print(table)
    if a.markdown:
        with open(a.markdown, "a") as f:
            f.write(table + "\n")
    rows = [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    line = json.dumps({"benchmark": "csm_speed", "device": str(device), "dtype": a.dtype if a.dtype == "exact" else
                       str(dtype).replace("torch.", ""), "impls": impls, "rows": rows})  # fmt: skip
    if a.json:
        Path(a.json).write_text(line + "\n")
    print(line)
    return rows


def _hf_version() -> str:
    import transformers

    return transformers.__version__


def render(rows: list[dict], device: torch.device, dtype: torch.dtype, a) -> str:
    fmt = lambda v, p=1: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    if device.type == "cuda":
        machine = torch.cuda.get_device_name()
    else:
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    lines = [
        f"\n## CSM engine speed — {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"`benchmarks/csm_speed.py --sizes {a.sizes} --frames {a.frames} --full-frames {a.full_frames} "
        f"--batches {a.batches} --repeats {a.repeats} --threads {a.threads} --impls {a.impls} --dtype {a.dtype}"
        f"{' --no-compile' if a.no_compile else ''}` on {machine}; best of the repeats, ours and transformers runs alternating; "
        f"{dtype}; torch {torch.__version__}; transformers {_hf_version()}; random weights shared by both implementations; "
        "top-k sampling (T=0.9, k=50). fps = frames/s over all rows; RTF per row (lower is better); "
        "TTFA = time to first audio (ours: first 2-frame streamed chunk; transformers: 2nd frame + decode); "
        "peak = extra memory during generation.",
        "",
        "| size | params (M) | batch | frames | ours fps | hf fps | speed-up | ours RTF | hf RTF | ours TTFA ms | hf TTFA ms | ours peak MB | hf peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    eager = "eager_fps" in rows[0] if rows else False
    gib = "ours_peak_gib" in rows[0] if rows else False
    if eager:  # ours = compiled on CUDA; eager = the same engine uncompiled
        lines[-2] += " eager fps | eager RTF | eager TTFA ms | compile gain |"
        lines[-1] += "---|---|---|---|"
    if gib:
        lines[-2] += " ours peak GiB (total) | hf peak GiB (total) |"
        lines[-1] += "---|---|"
    for r in rows:
        line = (
            f"| {r['size']} | {r['params_m']} | {r['batch']} | {r['frames']} | {fmt(r['ours_fps'])} | {fmt(r['hf_fps'])} "
            f"| **{r['speedup']:.2f}x** | {fmt(r['ours_rtf'], 2)} | {fmt(r['hf_rtf'], 2)} | {fmt(r['ours_ttfa_ms'], 0)} "
            f"| {fmt(r['hf_ttfa_ms'], 0)} | {fmt(r['ours_peak_mb'], 0)} | {fmt(r['hf_peak_mb'], 0)} |"
        )
        if eager:
            line += (f" {fmt(r['eager_fps'])} | {fmt(r['eager_rtf'], 3)} | {fmt(r['eager_ttfa_ms'], 0)} "
                     f"| {r['compile_speedup']:.2f}x |")  # fmt: skip
        if gib:
            line += f" {fmt(r.get('ours_peak_gib'), 2)} | {fmt(r.get('hf_peak_gib'), 2)} |"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
