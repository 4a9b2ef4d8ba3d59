"""No compile on the serving thread: warm-up traces every graph a request can select (issue #28)."""

from __future__ import annotations

import torch

from echoforge.csm import generate as G
from echoforge.csm.model import CSM, CSMArgs, ModelArgs
from echoforge.csm.runner import ModelRunner, buckets


def test_top_k_2051_runs_a_graph_traced_at_warm_up():
    small = dict(n_layer=1, n_head=2, n_local_heads=1, dim=32, intermediate_size=64, max_seq_len=64, rope_scaling=None)
    torch.manual_seed(0)
    m = CSM(CSMArgs(ModelArgs(**small), ModelArgs(**small), text_vocab_size=16, audio_vocab_size=2051,
                    audio_num_codebooks=4)).eval()  # fmt: skip
    runner = ModelRunner(m, torch.device("cpu"), max_rows=2, static=True)
    traced = []

    def backend(gm, example_inputs):  # counts dynamo traces (each one is a compile on a real backend)
        traced.append(gm)
        return gm.forward

    torch._dynamo.reset()
    runner.step_fn = torch.compile(G.frame_step, backend=backend, fullgraph=True, dynamic=False)
    runner.warmup()
    assert len(traced) == len(buckets(2)) * len(runner.kmax_bounds()) and runner.kmax_bounds() == [256, 2051]
    with torch.inference_mode():
        for slot, topk in enumerate((2051, 3)):  # one row at 2051, then both rows (the 2-row bucket)
            runner.start_row(slot, torch.randn(32), pos=slot + 1, temperature=0.9, topk=topk, key=slot)
            for _ in range(2):
                runner.decode(slot + 1, tag=None)
        runner.park(0)
        runner.decode(2, tag=None)  # top-k 3 only: back to the 256 bound, also warm
    assert len(traced) == len(buckets(2)) * 2  # nothing traced after warm-up
