"""The CSM training loop (``echoforge train CONFIG``), nanoGPT style: one readable function.

Per optimizer step: set the cosine learning rate, maybe validate, fetch ``grad_accum``
micro-batches, count their scored frames over all ranks (so the loss is a true per-frame
mean however the global batch is split), forward/backward each under bf16 autocast, clip,
step, log, maybe checkpoint.

Loss = mean codebook-0 CE over every scored audio frame
     + ``decoder_weight`` * mean depth-decoder CE over codebooks 1..31 of a random
       ``decoder_fraction`` (1/16) of those frames (Sesame's compute amortization).

Checkpoints (``out_dir/step-NNNNNN/``) are transformers-format CSM directories that
``CSMGenerator.from_pretrained`` loads directly (LoRA merged), plus ``trainer_state.pt``
(step, optimizer, LoRA adapter, RNG) for ``resume``; ``out_dir/latest.json`` and the
``out_dir/last`` symlink point at the newest, and ``out_dir/final/`` holds the end-of-run export.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from echoforge.csm.hub import resolve
from echoforge.csm.loader import load_checkpoint
from echoforge.csm.model import CSM
from echoforge.train import distributed as D
from echoforge.train.configs import TrainConfig, load_config, validate_shapes
from echoforge.train.dataset import ShardedDataset, build_rows, choose_decoder_rows, collate
from echoforge.train.modeling import (
    CSMForTraining,
    apply_lora,
    combine_losses,
    export_checkpoint,
    init_weights,
    lora_scales,
    merge_lora_state,
)

log = logging.getLogger("echoforge.train")


# ----------------------------------------------------------------------------- pieces


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay from ``lr`` to ``lr * min_lr_ratio`` at ``max_steps``."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = min(1.0, (step - o.warmup_steps) / max(1, o.max_steps - o.warmup_steps))
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * coeff)


def build_model(cfg: TrainConfig, resume_dir: Path | None = None) -> tuple[Any, Path | None]:
    """The CSM to train (fp32, CPU) and the directory whose codec/tokenizer exports carry over.

    Fine-tuning loads ``init_from`` (or, when resuming a full fine-tune, the last checkpoint);
    from-scratch builds the configured shapes with fresh weights.
    """
    m = cfg.model
    source = m.codec_from or m.tokenizer_from
    source_dir = Path(resolve(source)) if source else None
    full_resume = resume_dir is not None and not cfg.lora.enabled
    if m.init_from or full_resume:
        path = resume_dir if full_resume else m.init_from
        ck = load_checkpoint(path, "cpu", torch.float32)
        model = ck.model
        if m.init_from and source_dir is None:
            source_dir = Path(resolve(m.init_from))
            source_dir = source_dir if source_dir.is_dir() else source_dir.parent
    else:
        args = m.scratch_args()
        validate_shapes(args, m.expected_backbone_params, m.params_tolerance)
        model = CSM(args)
        init_weights(model)
    if cfg.data.max_seq_len > model.args.backbone.max_seq_len:
        raise ValueError(
            f"data.max_seq_len {cfg.data.max_seq_len} exceeds the model's window {model.args.backbone.max_seq_len}"
        )
    return model.train(), source_dir


def merged_state_dict(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full state dict of the training module (``csm.*`` keys, maybe LoRA-parametrized) -> the
    plain ``CSM`` state dict that is exported (LoRA merged into the weights)."""
    state = {k.removeprefix("module.").removeprefix("csm."): v for k, v in state.items()}
    return merge_lora_state(state | lora_scales(model))


def _full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict | None]:
    """Model (and optimizer) state gathered to full tensors on CPU (collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return msd, osd


class Batcher:
    """Deterministic global batches: step ``s`` takes samples ``s*G .. (s+1)*G-1`` of an endless,
    per-epoch shuffled order (G = micro-batch x grad_accum x world). Rank ``r`` takes micro-batch
    slices ``(m * world + r)``, so the union over ranks does not depend on the world size."""

    def __init__(self, ds: ShardedDataset, cfg: TrainConfig, info: D.DistInfo, shuffle: bool = True):
        self.ds, self.cfg, self.info, self.shuffle = ds, cfg, info, shuffle
        self.valid = np.flatnonzero(ds.target_lengths() <= cfg.data.max_seq_len)  # samples whose target fits
        if self.valid.size == 0:
            raise ValueError(f"{ds.root}: no sample fits data.max_seq_len={cfg.data.max_seq_len}")
        self._perm: dict[int, np.ndarray] = {}

    def sample_at(self, g: int) -> int:
        n = self.valid.size
        epoch, i = divmod(g, n)
        if not self.shuffle:
            return int(self.valid[i])
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng(self.cfg.seed + epoch).permutation(n)}
        return int(self.valid[self._perm[epoch][i]])

    def micro_batch(self, step: int, micro: int, accum: int, fraction: float) -> dict[str, Any]:
        bs, world = self.cfg.optim.batch_size, self.info.world_size
        start = step * bs * accum * world + (micro * world + self.info.rank) * bs
        gs = list(range(start, start + bs))
        rows = [build_rows(self.ds[self.sample_at(g)], self.ds.num_codebooks, self.cfg.data.max_seq_len, self.cfg.data.loss_on_context)
                for g in gs]  # fmt: skip
        batch = collate(rows)
        # Per-sample seeds: the decoder's frames depend only on (seed, global position).
        batch["dec_rows"] = choose_decoder_rows(batch["c0_mask"], fraction, [self.cfg.seed * 1_000_003 + g for g in gs])
        return batch


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# ----------------------------------------------------------------------------- the loop


def train(cfg: TrainConfig, console: Any = None, progress: bool = True) -> dict[str, Any]:
    """Train according to ``cfg``. Returns a summary (final losses, validation, checkpoint path).

    Works in one process or under torchrun (``cfg.distributed`` = ddp | fsdp).
    """
    info = D.setup(cfg.distributed, cfg.device)
    out_dir = Path(cfg.out_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    D.barrier(info)
    torch.manual_seed(cfg.seed)
    use_bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and info.device.type == "cuda")

    def autocast() -> torch.autocast:
        return torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=use_bf16)

    # -- resume point
    latest = out_dir / "latest.json"
    resume_dir = Path(json.loads(latest.read_text())["path"]) if cfg.resume and latest.is_file() else None
    state = torch.load(resume_dir / "trainer_state.pt", map_location="cpu", weights_only=False) if resume_dir else None

    # -- model
    model, source_dir = build_model(cfg, resume_dir)
    args = model.args
    lc = cfg.lora
    n_trainable = (
        apply_lora(model, lc.r, lc.alpha, lc.target_modules)
        if lc.enabled
        else sum(p.numel() for p in model.parameters())
    )
    tm = CSMForTraining(model, cfg.grad_ckpt)
    if state is not None and state.get("lora") is not None:
        missing = tm.load_state_dict(state["lora"], strict=False).unexpected_keys
        assert not missing, missing
    tm.to(info.device)
    wrapped = D.wrap(tm, info)

    # -- optimizer: weight decay on matrices only (not norms)
    params = [(n, p) for n, p in wrapped.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if p.ndim >= 2], "weight_decay": cfg.optim.weight_decay},
        {"params": [p for n, p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                  fused=info.device.type == "cuda")  # fmt: skip
    step = 0
    if state is not None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(wrapped, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
        step = int(state["step"])
        torch.set_rng_state(state["rng"])

    # -- data
    train_ds = ShardedDataset(cfg.data.path, "train")
    val_ds = ShardedDataset(cfg.data.path, "val")
    train_batches = Batcher(train_ds, cfg, info)
    val_batches = Batcher(val_ds, cfg, info, shuffle=False) if len(val_ds) else None
    accum, k = cfg.optim.grad_accum, args.audio_num_codebooks

    writer = None
    if cfg.tensorboard and info.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out_dir / "tb"))
        except ImportError:
            log.warning("tensorboard is not installed (pip install 'echoforge[train]'); logging to log.jsonl only")
    log_file = (out_dir / "log.jsonl").open("a") if info.is_main else None

    def emit(record: dict[str, Any]) -> None:
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        if writer is not None:
            for key, v in record.items():
                if isinstance(v, (int, float)) and key != "step":
                    writer.add_scalar(key, v, record["step"])

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        """Validation loss and teacher-forced accuracy (decoder on *every* frame here)."""
        if val_batches is None:
            return {}
        wrapped.eval()
        sums = np.zeros(6)
        for i in range(cfg.eval_batches):  # every rank runs the same number of forwards (FSDP)
            b = _to(val_batches.micro_batch(i, 0, 1, 1.0), info.device)
            with autocast():
                o = wrapped(b["tokens"], b["tokens_mask"], b["c0_mask"], b["dec_rows"])
            sums += [
                o.c0_loss_sum.item(),
                o.c0_correct.item(),
                o.c0_count,
                o.dec_loss_sum.item(),
                o.dec_correct.item(),
                o.dec_count * (k - 1),
            ]
        c0l, c0c, c0n, dl, dc, dn = D.all_reduce_sum(sums.tolist(), info)
        wrapped.train()
        return {"val_c0_loss": c0l / max(c0n, 1), "val_c0_acc": c0c / max(c0n, 1), "val_dec_loss": dl / max(dn, 1),
                "val_dec_acc": dc / max(dn, 1), "val_loss": c0l / max(c0n, 1) + cfg.loss.decoder_weight * dl / max(dn, 1)}  # fmt: skip

    def save(step_done: int) -> Path:
        msd, osd = _full_state(wrapped, optimizer)
        path = out_dir / f"step-{step_done:06d}"
        if info.is_main:
            csm_state = merged_state_dict(msd, model)
            export_checkpoint(
                csm_state, args, path, source_dir, {"train_config.yaml": yaml.safe_dump(cfg.model_dump())}
            )
            lora = {k: v for k, v in msd.items() if "lora_" in k} if cfg.lora.enabled else None
            torch.save({"step": step_done, "optimizer": osd, "lora": lora, "rng": torch.get_rng_state(),
                        "config": cfg.model_dump()}, path / "trainer_state.pt")  # fmt: skip
            latest.write_text(json.dumps({"step": step_done, "path": str(path.resolve())}))
            last = out_dir / "last"  # always the newest checkpoint: csm.model=<out_dir>/last
            if last.is_symlink() or last.is_file():
                last.unlink()
            elif last.is_dir():
                shutil.rmtree(last)
            last.symlink_to(path.name, target_is_directory=True)
            old = sorted(out_dir.glob("step-*"))[: -cfg.keep_checkpoints]
            for p in old:
                shutil.rmtree(p, ignore_errors=True)
        D.barrier(info)
        return path

    bar = None
    if progress and info.is_main:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                       TimeRemainingColumn(), console=console, transient=False)  # fmt: skip
        task = bar.add_task("train", total=cfg.optim.max_steps, completed=step, status="")
        bar.start()
    if info.is_main:
        log.info("training %s params (%s trainable) on %s x%d (%s), %d train / %d val samples",
                 f"{sum(p.numel() for p in model.parameters()):,}", f"{n_trainable:,}", info.device, info.world_size,
                 cfg.distributed, len(train_ds), len(val_ds))  # fmt: skip

    history: list[dict[str, Any]] = []
    val: dict[str, float] = {}
    last_saved = None
    t0 = time.perf_counter()
    try:
        while step < cfg.optim.max_steps:
            lr = get_lr(step, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr
            if cfg.eval_every and step % cfg.eval_every == 0 and step > 0:
                val = evaluate()
                if info.is_main:
                    emit({"step": step, **val})

            # Fetch the step's micro-batches first: the loss is normalised by the frame counts of
            # the whole step over every rank, known before any backward.
            micro = [train_batches.micro_batch(step, m, accum, cfg.loss.decoder_fraction) for m in range(accum)]
            local = [sum(int(b["c0_mask"].sum()) for b in micro), sum(int(b["dec_rows"].shape[0]) for b in micro)]
            n_c0, n_dec = (int(x) for x in D.all_reduce_sum(local, info))
            sums = np.zeros(4)
            tokens = 0
            for m, b in enumerate(micro):
                b = _to(b, info.device)
                tokens += int(b["tokens_mask"].any(-1).sum())
                with D.grad_sync(wrapped, info, sync=m == accum - 1), autocast():
                    o = wrapped(b["tokens"], b["tokens_mask"], b["c0_mask"], b["dec_rows"])
                    loss = combine_losses(o, n_c0, n_dec, cfg.loss.decoder_weight, k)
                    # DDP / FSDP average gradients over ranks; our loss is already a global mean.
                    (loss * info.world_size).backward()
                sums += [o.c0_loss_sum.item(), o.dec_loss_sum.item(), o.c0_correct.item(), o.dec_correct.item()]
            grad_norm = 0.0
            if cfg.optim.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], cfg.optim.grad_clip)
                grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            c0l, dl, c0c, dc, tok = D.all_reduce_sum([*sums.tolist(), tokens], info)
            rec = {"step": step, "lr": lr, "loss": c0l / max(n_c0, 1) + cfg.loss.decoder_weight * dl / max(n_dec * (k - 1), 1),
                   "c0_loss": c0l / max(n_c0, 1), "dec_loss": dl / max(n_dec * (k - 1), 1), "c0_acc": c0c / max(n_c0, 1),
                   "dec_acc": dc / max(n_dec * (k - 1), 1), "frames": n_c0, "decoder_frames": n_dec, "grad_norm": grad_norm,
                   "tokens_per_s": tok / max(time.perf_counter() - t0, 1e-9)}  # fmt: skip
            t0 = time.perf_counter()
            history.append(rec)
            if info.is_main:
                emit(rec)
                if bar is not None:
                    bar.update(
                        task, completed=step, status=f"loss {rec['loss']:.3f} c0 {rec['c0_acc']:.2f} lr {lr:.1e}"
                    )
                if step % cfg.log_every == 0 or step == cfg.optim.max_steps:
                    log.info("step %d loss %.4f (c0 %.4f dec %.4f) acc c0 %.3f dec %.3f lr %.2e %.0f tok/s", step, rec["loss"],
                             rec["c0_loss"], rec["dec_loss"], rec["c0_acc"], rec["dec_acc"], lr, rec["tokens_per_s"])  # fmt: skip
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.optim.max_steps:
                last_saved = save(step)

        val = evaluate()
        if info.is_main and val:
            emit({"step": step, **val})
        last_saved = save(step)
        final = out_dir / "final"
        if info.is_main:
            shutil.rmtree(final, ignore_errors=True)
            shutil.copytree(last_saved, final, ignore=shutil.ignore_patterns("trainer_state.pt"))
    finally:
        if bar is not None:
            bar.stop()
        if log_file is not None:
            log_file.close()
        if writer is not None:
            writer.close()
    D.cleanup(info)
    return {"step": step, "history": history, "val": val, "checkpoint": str(out_dir / "final"), "rank": info.rank,
            "decoder_frames_total": tm.decoder_calls}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """``python -m echoforge.train.trainer CONFIG [key=value ...]`` (same as ``echoforge train``)."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    train(load_config(argv[0], argv[1:]), progress=False)


if __name__ == "__main__":
    main()
