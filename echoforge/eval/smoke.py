"""SMOKE TEST ONLY: a tiny random-weight CSM checkpoint, to try the whole pipeline offline.

``echoforge data tiny-model OUT`` writes

* ``OUT/tiny-csm/`` — a transformers-format CSM (config.json with a tiny Mimi ``codec_config``,
  model.safetensors incl. ``codec_model.*``, a word-level tokenizer.json) that
  :class:`echoforge.csm.CSMGenerator`, ``echoforge data prepare`` and ``echoforge train`` load.
  Its weights are random: it *speaks noise*, and the evaluation flags it as such.
* ``OUT/speech/`` — a few espeak-ng turns with ``manifest.jsonl`` (when espeak-ng is installed);
* ``OUT/smoke-train.yaml`` — a 2-step training config on ``OUT/prepared``.

It exercises the code paths (tokenizer, Mimi codec, sharding, training loop, export, eval),
never quality. The same recipe as the test suite's ``tests/csm/tiny_models.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>", "<|audio_eos|>", "<unk>"]
WORDS = (
    "[ ] 0 1 2 3 4 5 6 7 8 9 . , ! ? ' - hello world how are you today i am fine thanks the a quick brown fox "
    "jumps over lazy dog this is test of speech synthesis good morning yes no one two three four five six seven "
    "eight nine ten twenty hundred thousand dollars percent and first second third"
).split()
TEXT_VOCAB = 128
SMOKE_LINES = [(0, "Good morning, how are you today?"), (1, "I am fine, thanks."),
               (0, "This is a test of speech synthesis."), (1, "Yes, one two three four five.")]  # fmt: skip


def tiny_tokenizer():
    """A WordLevel tokenizer standing in for the gated Llama-3.2 tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    tok.add_special_tokens(SPECIALS)
    return tok


def tiny_csm_config():
    from transformers import CsmConfig, CsmDepthDecoderConfig, MimiConfig

    mimi = MimiConfig(hidden_size=32, num_filters=4, num_residual_layers=1, codebook_size=2048, codebook_dim=8,
                      vector_quantization_hidden_dimension=8, num_quantizers=32, upsample_groups=32, num_hidden_layers=1,
                      intermediate_size=32, num_attention_heads=2, num_key_value_heads=2, head_dim=16, sliding_window=250)  # fmt: skip
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
    depth = CsmDepthDecoderConfig(
        num_codebooks=32, backbone_hidden_size=64, vocab_size=2051, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=33,
        rope_parameters=dict(rope, original_max_position_embeddings=16),
    )  # fmt: skip
    return CsmConfig(
        num_codebooks=32, vocab_size=2051, text_vocab_size=TEXT_VOCAB, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, audio_token_id=2, audio_eos_token_id=3,
        codebook_pad_token_id=2050, codebook_eos_token_id=0, rope_parameters=dict(rope),
        depth_decoder_config=depth.to_dict(), codec_config=mimi.to_dict(),
    )  # fmt: skip


def write_tiny_csm(out: Path | str, seed: int = 0, weight_std: float = 0.2) -> Path:
    """Save a random tiny CSM (+ tokenizer) into ``out``; returns ``out``."""
    import torch
    from transformers import CsmForConditionalGeneration, PreTrainedTokenizerFast

    out = Path(out)
    torch.manual_seed(seed)
    model = CsmForConditionalGeneration(tiny_csm_config()).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("codec_model.") and not name.endswith("norm.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * weight_std)
        for m in model.codec_model.modules():  # random Mimi has all-zero codebooks: give them centroids
            if hasattr(m, "embed_sum") and hasattr(m, "cluster_usage"):
                m.embed_sum.copy_(torch.randn(m.embed_sum.shape, generator=g))
                m.cluster_usage.fill_(1.0)
                m._embed = None
    model.save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer(), bos_token=SPECIALS[0], eos_token=SPECIALS[1],
                            pad_token=SPECIALS[2], unk_token="<unk>").save_pretrained(out)  # fmt: skip
    (out / "SMOKE_TEST_ONLY.txt").write_text(
        "Random weights written by `echoforge data tiny-model`: this model speaks noise. It exists to try the "
        "pipeline (data prepare, train, eval) without the gated sesame/csm-1b weights, never for quality.\n"
    )
    return out


def write_smoke_kit(out: Path | str, seed: int = 0) -> dict[str, Path]:
    """The tiny model, a few espeak-ng turns with a manifest, and a 2-step training config."""
    import yaml

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"model": write_tiny_csm(out / "tiny-csm", seed)}
    try:
        from echoforge.audio import save_audio
        from echoforge.config import load_settings
        from echoforge.engines import SynthesisRequest, create_engine

        espeak = create_engine(load_settings(), "espeak")
        speech = out / "speech"
        speech.mkdir(exist_ok=True)
        rows = []
        for i, (spk, text) in enumerate(SMOKE_LINES):
            voice = "en-us" if spk == 0 else "en-us+f3"
            save_audio(speech / f"t{i}.wav", espeak.synthesize(SynthesisRequest(text=text, voice=voice)), espeak.sample_rate)
            rows.append({"audio": f"t{i}.wav", "speaker": f"s{spk}", "text": text, "conversation": f"c{i // 2}"})
        (speech / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        paths["speech"] = speech
    except Exception:  # espeak-ng missing: the user brings their own recordings
        pass
    cfg = {"out_dir": str(out / "run"), "device": "cpu", "model": {"init_from": str(paths["model"])},
           "data": {"path": str(out / "prepared"), "max_seq_len": 1024},
           "optim": {"lr": 1e-3, "warmup_steps": 1, "max_steps": 2, "batch_size": 2}, "eval_batches": 1,
           "eval_every": 0, "save_every": 0}  # fmt: skip
    (out / "smoke-train.yaml").write_text("# SMOKE TEST ONLY (tiny random model, 2 steps)\n" + yaml.safe_dump(cfg))
    paths["config"] = out / "smoke-train.yaml"
    paths["prepared"] = out / "prepared"
    return paths
