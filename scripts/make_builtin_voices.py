"""Generate EchoForge's built-in voice reference clips (run once; the outputs are committed).

The clips are SYNTHETIC: three are made with the Piper ``en_US-joe-medium`` voice (one
unchanged, two pitch/tempo-shifted with sox), two with espeak-ng's female variants. They give
every built-in voice a stable, licence-clean reference and transcript; for CSM they are the
voice prompt, so CSM imitates these synthetic voices (record your own for natural ones).

    .venv/bin/python scripts/make_builtin_voices.py   # writes echoforge/voices/*.ogg + voices.yaml
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from echoforge.audio import fade_edges, load_audio, normalize_loudness, resample, save_audio
from echoforge.config import load_settings
from echoforge.engines import SynthesisRequest, create_engine

OUT = Path(__file__).resolve().parents[1] / "echoforge" / "voices"
RATE = 24_000  # CSM's rate; Ogg Opus stores it at 48 kHz and it is resampled on load

VOICES = [
    {
        "id": "atlas",
        "name": "Atlas",
        "engine": "piper",
        "sox": [],
        "tags": {"gender": "male", "style": "neutral", "language": "en-US"},
        "description": "Even, friendly American male. Synthetic reference clip (Piper en_US-joe-medium).",
        "transcript": "Hi, I'm Atlas. I like to keep things clear and simple, so let's get started whenever you're ready.",
        "fallback_voice": "en-us",
        "aliases": ["echo", "ash"],
    },
    {
        "id": "orion",
        "name": "Orion",
        "engine": "piper",
        "sox": ["pitch", "-300", "tempo", "0.95"],
        "tags": {"gender": "male", "style": "deep narrator", "language": "en-US"},
        "description": "Low, unhurried male narrator. Synthetic reference clip (Piper joe voice, pitched down with sox).",
        "transcript": "The night was quiet, and the old lighthouse kept its slow watch over the harbor.",
        "fallback_voice": "en-us+m3",
        "aliases": ["onyx", "cedar"],
    },
    {
        "id": "rowan",
        "name": "Rowan",
        "engine": "piper",
        "sox": ["pitch", "250", "tempo", "1.08"],
        "tags": {"gender": "male", "style": "energetic", "language": "en-US"},
        "description": "Bright, quick, upbeat male voice. Synthetic reference clip (Piper joe voice, pitched up with sox).",
        "transcript": "Oh, this is great news! We finished early, so let's celebrate with a walk in the park.",
        "fallback_voice": "en-us+m7",
        "aliases": ["fable", "verse"],
    },
    {
        "id": "juniper",
        "name": "Juniper",
        "engine": "espeak",
        "espeak_voice": "en-us+f3",
        "sox": [],
        "tags": {"gender": "female", "style": "warm", "language": "en-US"},
        "description": "Warm American female voice. Synthetic, robotic reference clip (espeak-ng en-us+f3): replace it with a real recording for natural results.",
        "transcript": "Hello there, I'm Juniper. Tell me what you need and I'll help you with it.",
        "fallback_voice": "en-us+f3",
        "aliases": ["alloy", "nova", "coral"],
    },
    {
        "id": "maple",
        "name": "Maple",
        "engine": "espeak",
        "espeak_voice": "en-gb+f4",
        "sox": [],
        "tags": {"gender": "female", "style": "calm", "language": "en-GB"},
        "description": "Calm British female voice. Synthetic, robotic reference clip (espeak-ng en-gb+f4): replace it with a real recording for natural results.",
        "transcript": "Good afternoon. Take a deep breath, settle in, and we'll go through it together, step by step.",
        "fallback_voice": "en-gb+f4",
        "aliases": ["shimmer", "sage", "ballad", "marin"],
    },
]


def _sox(audio: np.ndarray, sr: int, effects: list[str]) -> tuple[np.ndarray, int]:
    if not effects:
        return audio, sr
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.wav", Path(tmp) / "out.wav"
        save_audio(src, audio, sr)
        subprocess.run(["sox", str(src), str(dst), *effects], check=True)
        return load_audio(dst)


def main() -> int:
    settings = load_settings(data_dir=Path(tempfile.mkdtemp()))
    engines = {name: create_engine(settings, name) for name in ("piper", "espeak")}
    catalog = []
    for speaker, spec in enumerate(VOICES):
        engine = engines[spec["engine"]]
        request = SynthesisRequest(text=spec["transcript"], voice=spec.get("espeak_voice"), temperature=0.0, seed=0)
        audio = engine.synthesize(request)
        audio, sr = _sox(audio, engine.sample_rate, spec["sox"])
        audio = fade_edges(normalize_loudness(resample(audio, sr, RATE), -20.0), RATE, 10, 30)
        path = save_audio(OUT / f"{spec['id']}.ogg", audio, RATE)
        print(f"{path.name}: {audio.size / RATE:.1f} s, {path.stat().st_size / 1024:.0f} KB")
        catalog.append(
            {
                "id": spec["id"],
                "name": spec["name"],
                "description": spec["description"],
                "tags": spec["tags"],
                "transcript": spec["transcript"],
                "speaker": speaker,
                "sample": path.name,
                "fallback_voice": spec["fallback_voice"],
                "aliases": spec["aliases"],
            }
        )
    header = (
        "# Built-in voices. Generated by scripts/make_builtin_voices.py; the clips are synthetic (Piper / espeak-ng).\n"
    )
    (OUT / "voices.yaml").write_text(
        header + yaml.safe_dump({"voices": catalog}, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
