"""A tiny random Mimi for tests (real 24 kHz / 1920-sample hop, tiny widths, no downloads)."""

from __future__ import annotations

import torch


def tiny_mimi_config(num_codebooks: int = 32, sliding_window: int = 250):
    """Mimi config with the real hop (upsampling 8*6*5*4, x2 latent stride) but tiny widths."""
    from transformers import MimiConfig

    return MimiConfig(
        hidden_size=32,
        num_filters=4,
        num_residual_layers=1,
        codebook_size=2048,
        codebook_dim=8,
        vector_quantization_hidden_dimension=8,
        num_quantizers=num_codebooks,
        upsample_groups=32,  # grouped upsampling conv needs groups == hidden_size here
        num_hidden_layers=2,
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,  # exercises grouped-query attention in the streaming cache
        head_dim=16,
        sliding_window=sliding_window,
    )


def randomize_codebooks(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Random-init Mimi has all-zero codebooks (everything encodes to code 0): give random centroids."""
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "embed_sum") and hasattr(m, "cluster_usage"):
                m.embed_sum.copy_(torch.randn(m.embed_sum.shape, generator=generator))
                m.cluster_usage.fill_(1.0)
                m._embed = None  # transformers caches embed_sum / cluster_usage on first use


def build_tiny_mimi(num_codebooks: int = 32, seed: int = 0, sliding_window: int = 250):
    """A seeded tiny random ``transformers.MimiModel`` (fp32, eval) with random codebooks.

    Layer scales are raised from 0.01 to 0.5 so the transformer actually shapes the output
    (a tiny scale would make a streaming-cache bug invisible).
    """
    from transformers import MimiModel

    torch.manual_seed(seed)
    model = MimiModel(tiny_mimi_config(num_codebooks, sliding_window)).float().eval()
    gen = torch.Generator().manual_seed(seed)
    randomize_codebooks(model, gen)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scale.scale"):
                p.fill_(0.5)
    return model
