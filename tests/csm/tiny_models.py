"""Tiny random-weight CSM checkpoints for tests (no downloads).

``build_tiny_csm(tmp_path)`` saves a transformers-format CSM directory (config.json with a
tiny Mimi ``codec_config``, model.safetensors incl. ``codec_model.*``, tokenizer.json) that
:class:`echoforge.csm.CSMGenerator` and transformers' ``CsmForConditionalGeneration`` both load.
Other test suites (server, training) import it or use the ``tiny_csm_dir`` fixture.
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


def tiny_mimi_config():
    """A Mimi config with the real 1920-sample hop (12.5 Hz, 32 codebooks) but tiny widths."""
    from transformers import MimiConfig

    return MimiConfig(
        hidden_size=32,
        num_filters=4,
        num_residual_layers=1,
        codebook_size=2048,
        codebook_dim=8,
        vector_quantization_hidden_dimension=8,
        num_quantizers=32,
        upsample_groups=32,  # must equal hidden_size for the tiny model
        num_hidden_layers=1,
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=250,
    )


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


# ----------------------------------------------------------------------------- real repo layouts

# What the real ``sesame/csm-1b`` repo names its transformers weights (config.json "transformers_weights").
HF_INDEX = "transformers.safetensors.index.json"
HF_SHARDS = ("transformers-00001-of-00002.safetensors", "transformers-00002-of-00002.safetensors")


def original_state_dict(model) -> dict[str, torch.Tensor]:
    """A transformers ``CsmForConditionalGeneration``'s weights in the original Sesame (torchtune) layout."""
    from echoforge.csm.loader import args_from_hf_config, convert_hf_state_dict, export_sesame_state_dict
    from echoforge.csm.model import CSM

    args = args_from_hf_config(model.config.to_dict())
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("codec_model.")}
    ours = CSM(args)
    ours.load_state_dict(convert_hf_state_dict(sd, args), strict=False)
    return {k: v.contiguous() for k, v in export_sesame_state_dict(ours).items()}


def save_tiny_tokenizer(out: Path | str) -> None:
    """tokenizer.json / tokenizer_config.json (+ the processor's side files the real repo has)."""
    import json

    from transformers import PreTrainedTokenizerFast

    out = Path(out)
    PreTrainedTokenizerFast(
        tokenizer_object=tiny_tokenizer(), bos_token=SPECIALS[0], eos_token=SPECIALS[1], pad_token=SPECIALS[2],
        unk_token="<unk>",
    ).save_pretrained(out)  # fmt: skip
    if not (out / "special_tokens_map.json").exists():
        (out / "special_tokens_map.json").write_text(json.dumps({"bos_token": SPECIALS[0], "eos_token": SPECIALS[1]}))
    (out / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}")
    (out / "preprocessor_config.json").write_text(
        json.dumps({"feature_extractor_type": "EncodecFeatureExtractor", "sampling_rate": 24000, "feature_size": 1})
    )


def save_real_layout(
    model, out: Path | str, *, transformers: bool = True, original: tuple[str, ...] = ("model.safetensors", "ckpt.pt")
) -> Path:
    """Save ``model`` laid out like the real ``sesame/csm-1b`` download.

    ``transformers``: ``transformers-0000N-of-00002.safetensors`` + ``transformers.safetensors.index.json``
    (transformers names, Mimi bundled as ``codec_model.*``), named by config.json's ``transformers_weights``.
    ``original``: any of ``model.safetensors`` / ``ckpt.pt`` in the original Sesame layout (no codec).
    config.json is always the transformers ``CsmConfig`` with the ``transformers_weights`` key, as in the real
    repo (even when only the original files were downloaded).
    """
    import json
    import shutil

    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "_save"
    total = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    model.save_pretrained(tmp, max_shard_size=int(total * 0.6))  # -> exactly two shards
    index = json.loads((tmp / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 2, shards
    for name in ("config.json", "generation_config.json"):
        shutil.move(tmp / name, out / name)
    if transformers:
        rename = dict(zip(shards, HF_SHARDS, strict=True))
        for old, new in rename.items():
            shutil.move(tmp / old, out / new)
        index["weight_map"] = {k: rename[v] for k, v in index["weight_map"].items()}
        (out / HF_INDEX).write_text(json.dumps(index, indent=2))
    shutil.rmtree(tmp)
    cfg = json.loads((out / "config.json").read_text())
    cfg["transformers_weights"] = HF_INDEX
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    if original:
        sd = original_state_dict(model)
        if "model.safetensors" in original:
            save_file(sd, str(out / "model.safetensors"))
        if "ckpt.pt" in original:
            torch.save(sd, out / "ckpt.pt")
    save_tiny_tokenizer(out)
    return out
