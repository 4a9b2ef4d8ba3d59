"""Training throughput of the CSM trainer: tokens (sequence rows) per second and frames per second.

Runs full optimizer steps (forward, loss with 1/16 decoder amortization, backward, AdamW) on
random batches with a random model of the chosen shape, after warm-up, with device syncs.

    python benchmarks/train_throughput.py                       # tiny model on CPU (smoke)
    python benchmarks/train_throughput.py --preset csm-1b --device cuda --batch 4 --seq 2048 --grad-ckpt
    python benchmarks/train_throughput.py --append              # add a section to BENCHMARKS.md

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from echoforge.csm.model import CSM, CSMArgs, ModelArgs  # noqa: E402
from echoforge.train.dataset import choose_decoder_rows  # noqa: E402
from echoforge.train.modeling import CSMForTraining, combine_losses, count_parameters, init_weights  # noqa: E402

TINY = CSMArgs(backbone=ModelArgs(n_layer=4, n_head=8, n_local_heads=2, dim=256, intermediate_size=768, max_seq_len=2048),
               decoder=ModelArgs(n_layer=2, n_head=4, n_local_heads=2, dim=128, intermediate_size=384),
               text_vocab_size=1024)  # fmt: skip


def random_batch(b: int, t: int, k: int, vocab: int, text_vocab: int, device: torch.device) -> dict:
    """Sequences shaped like real ones: 10% text rows, then audio frames (all scored)."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.zeros(b, t, k + 1, dtype=torch.long)
    mask = torch.zeros(b, t, k + 1, dtype=torch.bool)
    n_text = max(1, t // 10)
    tokens[:, :n_text, -1] = torch.randint(0, text_vocab, (b, n_text), generator=g)
    mask[:, :n_text, -1] = True
    tokens[:, n_text:, :k] = torch.randint(0, vocab - 3, (b, t - n_text, k), generator=g)
    mask[:, n_text:, :k] = True
    c0 = mask[:, 1:, 0].clone()
    return {"tokens": tokens.to(device), "tokens_mask": mask.to(device), "c0_mask": c0.to(device)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", help="tiny | csm-1b")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--fraction", type=float, default=1 / 16)
    ap.add_argument("--grad-ckpt", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--append", action="store_true", help="append a section to BENCHMARKS.md")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(
        "cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device)
    )
    args = TINY if a.preset == "tiny" else CSMArgs.from_name(a.preset)
    torch.manual_seed(0)
    model = CSM(args)
    init_weights(model)
    tm = CSMForTraining(model.to(device), grad_ckpt=a.grad_ckpt).train()
    opt = torch.optim.AdamW([p for p in tm.parameters()], lr=1e-4, fused=device.type == "cuda")
    bf16 = device.type == "cuda"
    k = args.audio_num_codebooks
    batch = random_batch(a.batch, a.seq, k, args.audio_vocab_size, args.text_vocab_size, device)
    rows = choose_decoder_rows(batch["c0_mask"].cpu(), a.fraction, list(range(a.batch))).to(device)
    n_c0, n_dec = int(batch["c0_mask"].sum()), rows.shape[0]

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            o = tm(batch["tokens"], batch["tokens_mask"], batch["c0_mask"], rows)
            loss = combine_losses(o, n_c0, n_dec, 0.5, k)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    for _ in range(a.warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync(device)
    dt = (time.perf_counter() - t0) / a.steps
    params = count_parameters(args)["total"]
    res = {
        "bench": "train_throughput",
        "preset": a.preset,
        "params_m": round(params / 1e6, 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "dtype": "bf16 autocast" if bf16 else "fp32",
        "batch": a.batch,
        "seq": a.seq,
        "decoder_fraction": a.fraction,
        "grad_ckpt": a.grad_ckpt,
        "step_s": round(dt, 4),
        "tokens_per_s": round(a.batch * a.seq / dt, 1),
        "frames_per_s": round(n_c0 / dt, 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }
    header = "| preset | params | device | dtype | batch x seq | decoder frac | grad ckpt | step s | tokens/s | frames/s | peak GiB |"
    line = (f"| {res['preset']} | {res['params_m']}M | {res['device']} | {res['dtype']} | {a.batch} x {a.seq} | {a.fraction:.4g} | "
            f"{a.grad_ckpt} | {res['step_s']} | {res['tokens_per_s']} | {res['frames_per_s']} | {res['peak_mem_gib'] or '–'} |")  # fmt: skip
    table = "\n".join([header, "|" + "---|" * 11, line])
    print(table)
    if a.append:
        path = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
        cmd = "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:])
        section = (f"\n## Training throughput — {when} ({res['device']})\n\nMachine: {platform.machine()}, {os.cpu_count()} CPUs{load}, "
                   f"Python {platform.python_version()}, torch {torch.__version__}. Command: `{cmd.strip()}`.\n\n{table}\n\n"
                   "Tokens = sequence rows (text tokens + audio frames); every frame trains codebook 0, "
                   f"{a.fraction:.4g} of them the depth decoder. One optimizer step per measurement (AdamW).\n")  # fmt: skip
        with path.open("a") as f:
            f.write(section)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
