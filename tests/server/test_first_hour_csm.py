"""Issue 25 (item 2) on CSM: long text is generated piece after piece in one scheduler slot (each
piece continuing the previous one) and streamed; the audio cap follows from the text, not from
``generation.max_audio_length_ms``. Tiny random-weight CSM (tests/csm/tiny_models.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import pytest
from _servers import ServerProcess

TINY = Path(__file__).parents[1] / "csm" / "tiny_models.py"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not TINY.is_file(), reason="tests/csm/tiny_models.py is not in this checkout"),
]


def test_long_text_on_csm_is_spoken_past_the_configured_audio_limit(tmp_path_factory):
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("echoforge_tiny_models_fh", TINY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model_dir = module.save_real_layout(module.build_tiny_model(), tmp_path_factory.mktemp("tiny-csm") / "csm-1b")
    settings = {
        "device": "cpu",
        "csm": {"model": str(model_dir), "compile": False, "watermark": False, "max_batch_size": 1},
        "server": {"workers": 1, "rate_limit_per_minute": 0},
        "generation": {"max_audio_length_ms": 2000},  # the old rule refused anything over ≈ 2 s of speech
    }
    sentence = "hello world, how are you today? i am fine, thanks. "
    text = (sentence * 6).strip()  # ≈ 300 characters: several pieces
    with ServerProcess(tmp_path_factory.mktemp("csm-server"), "csm", settings).start(timeout=180) as server:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}
            with client.stream("POST", "/v1/audio/speech", json=body) as r:
                assert r.status_code == 200, r.read()
                reads = [len(b) for b in r.iter_bytes()]
            seconds = sum(reads) / 2 / 24_000
            assert seconds > 4.0, seconds  # past the 2 s setting: the cap follows from the text
            assert len(reads) > 3  # streamed as generated
