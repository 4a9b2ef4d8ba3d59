"""No host round-trips in the steady state (issue #28): once every row decodes, a scheduler step
builds no tensor from host data and reads no device scalar back (on CUDA each would wait for the
device and cancel the one-frame-in-flight overlap)."""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from echoforge.csm.generator import CSMGenerator, Request

# torch.tensor(<host data>) dispatches lift_fresh; .item() / bool(tensor) / int(tensor) dispatch _local_scalar_dense.
HOST_OPS = {torch.ops.aten.lift_fresh.default, torch.ops.aten._local_scalar_dense.default}


class HostOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_OPS:
            self.seen[str(func)] += 1
        return func(*args, **(kwargs or {}))


def test_a_steady_state_step_builds_no_tensor_from_host_data(tiny_csm_dir):
    gen = CSMGenerator.from_pretrained(tiny_csm_dir, device="cpu", max_batch_size=4)
    gen.static = True  # the CUDA path's shape: buckets, fixed-size step, a frame in flight
    sched = gen.make_scheduler(max_rows=4, max_waiting=8, lag=True)
    sched._thread = object()  # stepped by hand
    for i, topk in enumerate((50, 2051, 3)):  # 3 rows: not a bucket size (runs at 4)
        sched.submit(Request(f"row {i} says hello", speaker=i % 2, max_audio_length_ms=40 * 80,
                             temperature=0.9, topk=topk, seed=i))  # fmt: skip
    while len(sched.running) < 3 or sched.prefilling is not None or sched.waiting:
        sched.step()
    sched.step()  # the first frame in flight
    mode = HostOps()
    with mode:
        for _ in range(4):
            assert sched.step()
    assert len(sched.running) == 3  # still the steady state (no row joined or left)
    assert mode.seen == Counter()
