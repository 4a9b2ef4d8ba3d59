"""Tiny random-weight CSM checkpoints for tests (no downloads).

The builders live in :mod:`echoforge.csm.tiny` (also used by ``echoforge data tiny-model``);
this module adds directories laid out exactly like the real ``sesame/csm-1b`` download.
Other test suites (server, training, agent) import it or use the ``tiny_csm_dir`` fixture.
"""

from __future__ import annotations

from pathlib import Path

import torch

from echoforge.csm.tiny import (  # noqa: F401  (re-exported for the tests and benchmarks)
    SPECIALS,
    TEXT_VOCAB,
    WORDS,
    build_tiny_csm,
    build_tiny_model,
    randomize_mimi_codebooks,
    tiny_csm_config,
    tiny_mimi_config,
    tiny_tokenizer,
)

# ----------------------------------------------------------------------------- real repo layouts

# What the real ``sesame/csm-1b`` repo names its transformers weights (config.json "transformers_weights").
HF_INDEX = "transformers.safetensors.index.json"
HF_SHARDS = ("transformers-00001-of-00002.safetensors", "transformers-00002-of-00002.safetensors")


def original_state_dict(model) -> dict[str, torch.Tensor]:
    """A transformers ``CsmForConditionalGeneration``'s weights in the original Sesame (torchtune) layout."""
    from echoforge.csm.layouts import args_from_hf_config, convert_hf_state_dict, export_sesame_state_dict
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
