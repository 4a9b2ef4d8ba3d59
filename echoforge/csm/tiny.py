"""Tiny random-weight CSM checkpoints (no downloads): for the test suite, the benchmarks and
``echoforge data tiny-model`` (SMOKE TEST ONLY: random weights speak noise).

``build_tiny_csm(dir)`` saves a transformers-format CSM directory (config.json with a tiny Mimi
``codec_config``, model.safetensors incl. ``codec_model.*``, a word-level tokenizer.json standing
in for the gated Llama-3.2 one) that :class:`echoforge.csm.CSMGenerator` and transformers'
``CsmForConditionalGeneration`` both load. Known traps it handles: tiny Mimi needs
``upsample_groups == hidden_size``; random Mimi encodes everything to code 0 unless its
codebooks get random centroids.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Word-level vocabulary: specials first (ids fixed below), then what test prompts use.
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>", "<|audio_eos|>", "<unk>"]
WORDS = (
    "[ ] 0 1 2 3 4 5 6 7 8 9 . , ! ? ' - hello world how are you today i am fine thanks the a quick brown fox "
    "jumps over lazy dog this is test of speech synthesis good morning yes no one two three four five six seven "
    "eight nine ten twenty hundred thousand dollars percent and first second third"
).split()
TEXT_VOCAB = 128  # padded so ids stay < text_vocab_size


def tiny_tokenizer():
    """A WordLevel tokenizer standing in for the gated Llama-3.2 tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    assert len(vocab) <= TEXT_VOCAB
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.add_special_tokens(SPECIALS)
    return tok


def tiny_mimi_config(**overrides):
    """A Mimi config with the real 1920-sample hop (12.5 Hz, 32 codebooks) but tiny widths."""
    from transformers import MimiConfig

    kw = dict(
        hidden_size=32,
        num_filters=4,
        num_residual_layers=1,
        codebook_size=2048,
        codebook_dim=8,
        vector_quantization_hidden_dimension=8,
        num_quantizers=32,
        upsample_groups=32,  # must equal hidden_size for the tiny model (grouped upsampling conv)
        num_hidden_layers=1,
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=250,
    )
    kw.update(overrides)
    return MimiConfig(**kw)


@torch.no_grad()
def randomize_mimi_codebooks(codec: torch.nn.Module, generator: torch.Generator) -> None:
    """Random Mimi has all-zero codebooks (everything encodes to 0); give them random centroids."""
    for m in codec.modules():
        if hasattr(m, "embed_sum") and hasattr(m, "cluster_usage"):
            m.embed_sum.copy_(torch.randn(m.embed_sum.shape, generator=generator))
            m.cluster_usage.fill_(1.0)
            m._embed = None  # transformers caches embed_sum / cluster_usage


def tiny_csm_config(**overrides):
    from transformers import CsmConfig, CsmDepthDecoderConfig

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
    depth = CsmDepthDecoderConfig(
        num_codebooks=32, backbone_hidden_size=64, vocab_size=2051, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=33,
        rope_parameters=dict(rope, original_max_position_embeddings=16),
    )  # fmt: skip
    kw = dict(
        num_codebooks=32, vocab_size=2051, text_vocab_size=TEXT_VOCAB, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, audio_token_id=2, audio_eos_token_id=3,
        codebook_pad_token_id=2050, codebook_eos_token_id=0, rope_parameters=dict(rope),
        depth_decoder_config=depth.to_dict(), codec_config=tiny_mimi_config().to_dict(),
    )  # fmt: skip
    kw.update(overrides)
    return CsmConfig(**kw)


def build_tiny_model(seed: int = 0, weight_std: float = 0.2, **overrides):
    """A random ``CsmForConditionalGeneration`` (fp32, eval). Larger-than-default weights make
    greedy choices decisive, so fp32 rounding cannot flip an argmax between implementations."""
    from transformers import CsmForConditionalGeneration

    torch.manual_seed(seed)
    model = CsmForConditionalGeneration(tiny_csm_config(**overrides)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("codec_model.") or name.endswith("norm.weight"):
                continue
            p.copy_(torch.randn(p.shape, generator=g) * weight_std)
        randomize_mimi_codebooks(model.codec_model, g)
    return model


def build_tiny_csm(tmp_path: Path | str, seed: int = 0, **overrides) -> Path:
    """Save a tiny transformers-format CSM checkpoint + tokenizer into ``tmp_path/tiny-csm``."""
    from transformers import PreTrainedTokenizerFast

    out = Path(tmp_path) / "tiny-csm"
    model = build_tiny_model(seed, **overrides)
    model.save_pretrained(out)
    PreTrainedTokenizerFast(
        tokenizer_object=tiny_tokenizer(), bos_token=SPECIALS[0], eos_token=SPECIALS[1], pad_token=SPECIALS[2],
        unk_token="<unk>",
    ).save_pretrained(out)  # fmt: skip
    return out
