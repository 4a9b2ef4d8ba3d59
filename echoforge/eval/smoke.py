"""SMOKE TEST ONLY: a tiny random-weight CSM checkpoint, to try the whole pipeline offline.

``echoforge data tiny-model OUT`` writes

* ``OUT/tiny-csm/`` — a transformers-format CSM (config.json with a tiny Mimi ``codec_config``,
  model.safetensors incl. ``codec_model.*``, a word-level tokenizer.json) that
  :class:`echoforge.csm.CSMGenerator`, ``echoforge data prepare`` and ``echoforge train`` load.
  Its weights are random: it *speaks noise*, and the evaluation flags it as such.
* ``OUT/speech/`` — a few espeak-ng turns with ``manifest.jsonl`` (when espeak-ng is installed);
* ``OUT/smoke-train.yaml`` — a 2-step training config on ``OUT/prepared``.

It exercises the code paths (tokenizer, Mimi codec, sharding, training loop, export, eval),
never quality. The recipe is :mod:`echoforge.csm.tiny`, the one the test suite uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from echoforge.audio import save_audio
from echoforge.config import load_settings
from echoforge.engines import SynthesisRequest, create_engine

SMOKE_LINES = [(0, "Good morning, how are you today?"), (1, "I am fine, thanks."),
               (0, "This is a test of speech synthesis."), (1, "Yes, one two three four five.")]  # fmt: skip


def write_tiny_csm(out: Path | str, seed: int = 0, weight_std: float = 0.2) -> Path:
    """Save a random tiny CSM (+ tokenizer) into ``out`` (:mod:`echoforge.csm.tiny`'s recipe); returns ``out``."""
    # transformers takes seconds to import; only `echoforge data tiny-model` / the smoke kit need it.
    from transformers import PreTrainedTokenizerFast

    from echoforge.csm.tiny import SPECIALS, build_tiny_model, tiny_tokenizer  # builds on transformers, as above

    out = Path(out)
    build_tiny_model(seed, weight_std).save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer(), bos_token=SPECIALS[0], eos_token=SPECIALS[1],
                            pad_token=SPECIALS[2], unk_token="<unk>").save_pretrained(out)  # fmt: skip
    (out / "SMOKE_TEST_ONLY.txt").write_text(
        "Random weights written by `echoforge data tiny-model`: this model speaks noise. It exists to try the "
        "pipeline (data prepare, train, eval) without the gated sesame/csm-1b weights, never for quality.\n"
    )
    return out


def write_smoke_kit(out: Path | str, seed: int = 0) -> dict[str, Path]:
    """The tiny model, a few espeak-ng turns with a manifest, and a 2-step training config."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"model": write_tiny_csm(out / "tiny-csm", seed)}
    try:
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
