"""A tiny random Mimi for tests (real 24 kHz / 1920-sample hop, tiny widths, no downloads)."""

from __future__ import annotations

import torch

from echoforge.csm.tiny import randomize_mimi_codebooks


def tiny_mimi_config(num_codebooks: int = 32, sliding_window: int = 250):
    """:func:`echoforge.csm.tiny.tiny_mimi_config` with 2 transformer layers and one KV head (exercises
    grouped-query attention in the streaming cache)."""
    from echoforge.csm.tiny import tiny_mimi_config as base

    return base(num_quantizers=num_codebooks, sliding_window=sliding_window, num_hidden_layers=2, num_key_value_heads=1)


def build_tiny_mimi(num_codebooks: int = 32, seed: int = 0, sliding_window: int = 250):
    """A seeded tiny random ``transformers.MimiModel`` (fp32, eval) with random codebooks.

    Layer scales are raised from 0.01 to 0.5 so the transformer actually shapes the output
    (a tiny scale would make a streaming-cache bug invisible).
    """
    from transformers import MimiModel

    torch.manual_seed(seed)
    model = MimiModel(tiny_mimi_config(num_codebooks, sliding_window)).float().eval()
    gen = torch.Generator().manual_seed(seed)
    randomize_mimi_codebooks(model, gen)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scale.scale"):
                p.fill_(0.5)
    return model
