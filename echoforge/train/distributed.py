"""torchrun set-up and the one switch between DDP and FSDP2 (``distributed: ddp | fsdp``).

Launch with ``torchrun --nproc_per_node N -m echoforge.cli train CONFIG``. Without torchrun
(no ``WORLD_SIZE`` > 1 in the environment) everything here is a no-op and training runs in
one process. NCCL on CUDA, gloo on CPU (the tests run 2 CPU processes with gloo).

* ``ddp``: ``DistributedDataParallel`` around the training module; gradient sync is skipped on
  all but the last micro-batch of an optimizer step (``no_sync``).
* ``fsdp``: FSDP2 ``fully_shard`` on every transformer block of the backbone and the depth
  decoder, then on the root (embeddings, heads, norms); parameters become sharded DTensors
  and state dicts are gathered with ``torch.distributed.checkpoint.state_dict``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    mode: str = "none"  # none | ddp | fsdp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(pref)


def setup(mode: str, device_pref: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun with more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if world <= 1:
        return DistInfo(device=device, mode="none")
    if mode == "none":
        raise ValueError(
            "launched with torchrun (WORLD_SIZE > 1) but the config says distributed: none; set ddp or fsdp"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, local_rank, world, device, mode)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(module: nn.Module, info: DistInfo) -> nn.Module:
    """DDP / FSDP2 around the training module (``CSMForTraining``); identity in one process."""
    if not info.enabled:
        return module
    if info.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(module, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    if info.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        csm = module.csm
        for block in [*csm.backbone.layers, *csm.decoder.layers]:
            fully_shard(block)
        fully_shard(module)  # the rest: embeddings, heads, projection, final norms
        return module
    raise ValueError(f"unknown distributed mode {info.mode!r}")


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


@contextlib.contextmanager
def grad_sync(model: nn.Module, info: DistInfo, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter on non-final micro-batches."""
    if info.mode == "ddp" and info.enabled and not sync:
        with model.no_sync():
            yield
        return
    if info.mode == "fsdp" and info.enabled:
        model.set_requires_gradient_sync(sync)
    yield


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few numbers over ranks (float64 on the CPU/GPU of this rank)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
